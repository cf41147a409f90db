"""Writers that file rendered images in the on-disk layouts the adapters read."""
