# placeholder: filled in by the gold stage
