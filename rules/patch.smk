# placeholder: filled in by the patch stage
