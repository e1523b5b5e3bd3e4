"""zerolevel: surfaces (signed distance fields and watertight meshes) from 2D observations.

Data flows one way: scene I/O (`cameras`, `scene`) -> fields and meshes -> renderers (`render`)
-> losses -> methods, with metrics (`metrics`) and mesh extraction (`geometry`) as leaves.
"""

__version__ = "0.1.0"
