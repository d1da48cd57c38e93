# placeholder: filled in by the sites stage
