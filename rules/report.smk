# placeholder: filled in by the report stage
