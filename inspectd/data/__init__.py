"""Image I/O, MVTec-layout datasets and the cut-paste defect synthesiser."""
