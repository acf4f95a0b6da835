"""The value-added catalogue (FITS + HDF5) and HEALPix grouping."""
