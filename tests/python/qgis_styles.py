"""Open every output in a folder with QGIS (PyQGIS, Debian's python3-qgis, headless) the way
the QGIS desktop opens a file, default style included, and report as JSON what QGIS shows:
each vector layer's renderer (type, attribute, categories with their colours and fill style,
labelling) and each raster's renderer (paletted classes with labels and colours).

Run with the system python3 (PyQGIS is built for it): python3 qgis_styles.py FOLDER."""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer  # noqa: E402

VECTORS = {".gpkg", ".shp", ".geojson", ".fgb"}


def vector_report(path):
    layer = QgsVectorLayer(str(path), path.stem, "ogr")
    out = {"valid": layer.isValid(), "features": layer.featureCount()}
    renderer = layer.renderer()
    out["renderer"] = renderer.type() if renderer else None
    if renderer and renderer.type() == "categorizedSymbol":
        out["attribute"] = renderer.classAttribute()
        cats = []
        for c in renderer.categories():
            sym = c.symbol()
            sl = sym.symbolLayer(0)
            props = sl.properties()
            cats.append({
                "value": c.value(),
                "label": c.label(),
                "fill": sym.color().name(),
                "fill_alpha": sym.color().alpha(),
                "style": props.get("style"),
                "outline": props.get("outline_color"),
            })
        out["categories"] = cats
    out["labels_enabled"] = layer.labelsEnabled()
    if layer.labeling() is not None:
        out["label_field"] = layer.labeling().settings().fieldName
    return out


def raster_report(path):
    layer = QgsRasterLayer(str(path), path.stem)
    out = {"valid": layer.isValid()}
    renderer = layer.renderer()
    out["renderer"] = renderer.type() if renderer else None
    if renderer and renderer.type() == "paletted":
        out["classes"] = [
            {"value": c.value, "label": c.label, "color": c.color.name()}
            for c in renderer.classes()
        ]
    return out


def main(folder):
    app = QgsApplication([], False)
    app.initQgis()
    report = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix in VECTORS:
            report[path.name] = vector_report(path)
        elif path.suffix == ".tif":
            report[path.name] = raster_report(path)
    print(json.dumps(report))
    app.exitQgis()


if __name__ == "__main__":
    main(sys.argv[1])
