"""perception4d: LiDAR 4D perception on sparse (b, x, y, z, t) tensors.

Light at import: heavy dependencies (torch, spconv, open3d, av2) are imported
by the modules that need them.
"""

__version__ = "0.1.0"
