"""Write a georeferenced RGB "page" of printed words (Pillow's default font) for testing a
real text-detection model: python text_page.py OUT.tif [SIZE]"""
import random
import sys

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.transform import from_origin

out = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 640
random.seed(0)
im = Image.new("RGB", (size, size), (235, 235, 228))
draw = ImageDraw.Draw(im)
font = ImageFont.load_default(size=22)
words = "tessera maps fields rivers roads buildings forest harbour airport station bridge market school".split()
y = 20
while y < size - 40:
    x = 20
    while x < size - 120:
        word = random.choice(words)
        draw.text((x, y), word, fill=(25, 25, 25), font=font)
        x += int(draw.textlength(word, font=font)) + random.randint(15, 60)
    y += random.randint(40, 70)
img = np.asarray(im).transpose(2, 0, 1)
profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
               transform=from_origin(500000, 4600000, 1, 1))
with rasterio.open(out, "w", **profile) as dst:
    dst.write(img)
