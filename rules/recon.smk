# placeholder: filled in by the recon stage
