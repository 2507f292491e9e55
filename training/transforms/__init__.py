"""Image and keypoint transforms: top-down affine crops and augmentation, bottom-up affine and mosaic."""
