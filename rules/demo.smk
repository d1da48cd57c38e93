# placeholder: filled in by the demo stage
