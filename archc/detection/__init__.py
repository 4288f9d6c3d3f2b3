"""Object detection: box arithmetic (boxes), anchors and SSD default boxes (anchors), the input
transform (transforms), the detection description (declare), post-processing per detector kind
and ``archc.detect`` (api). JAX, static shapes, torchvision's exact rules."""
