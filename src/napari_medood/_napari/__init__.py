"""The napari face of napari-medood: reader, writer, sample data and dock widgets.

Only napari imports this package (through ``napari.yaml``); the headless core never does.
"""
