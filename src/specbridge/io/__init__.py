"""Survey readers (DESI, LAMOST, label catalogues), cross-match, the manifest, HDF5 and VAC I/O."""
