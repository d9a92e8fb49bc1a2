"""Building blocks of the 4D voxel transformer backbone (``perception4d.models.backbone_dsvt``)."""
