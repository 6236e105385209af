"""Draw a deterministic sample fashion catalog (Kaggle Fashion Product Images layout) with Pillow.

The catalog is the project's bundled default: product "packshots" of several types, colours and
patterns with plausible variation, plus a handful of broken files and rows without an image so
that acquire's reporting has something to report. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SIZE = 256
SUPERSAMPLE = 2
COLUMNS = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour",
           "season", "year", "usage", "productDisplayName"]
COLOURS = {
    "Black": (30, 30, 32), "White": (245, 245, 240), "Navy Blue": (28, 40, 90), "Red": (200, 30, 40),
    "Green": (40, 140, 60), "Yellow": (235, 200, 40), "Pink": (240, 140, 180), "Grey": (130, 130, 135),
    "Brown": (120, 75, 40), "Beige": (215, 195, 160), "Purple": (110, 50, 140), "Orange": (240, 120, 30),
    "Blue": (50, 110, 210), "Maroon": (110, 20, 35),
}
PATTERNS = ["Solid", "Striped", "Checked", "Polka Dot"]
# articleType -> (masterCategory, subCategory, display noun, polygon in a unit box, patterned?)
PRODUCTS: dict[str, tuple[str, str, str, list[tuple[float, float]], bool]] = {
    "Tshirts": ("Apparel", "Topwear", "T-shirt", [
        (.30, .15), (.42, .12), (.5, .18), (.58, .12), (.70, .15), (.92, .32), (.80, .44), (.72, .38),
        (.72, .90), (.28, .90), (.28, .38), (.20, .44), (.08, .32)], True),
    "Trousers": ("Apparel", "Bottomwear", "Trousers", [
        (.30, .08), (.70, .08), (.76, .92), (.58, .92), (.5, .35), (.42, .92), (.24, .92)], True),
    "Dresses": ("Apparel", "Dress", "Dress", [
        (.40, .08), (.60, .08), (.62, .30), (.86, .92), (.14, .92), (.38, .30)], True),
    "Casual Shoes": ("Footwear", "Shoes", "Sneakers", [
        (.08, .55), (.14, .40), (.40, .38), (.55, .48), (.85, .58), (.92, .70), (.90, .76), (.08, .76)], False),
    "Handbags": ("Accessories", "Bags", "Handbag", [
        (.18, .38), (.82, .38), (.90, .88), (.10, .88)], True),
    "Caps": ("Accessories", "Headwear", "Cap", [
        (.20, .62), (.26, .40), (.40, .30), (.60, .30), (.74, .40), (.80, .62), (.95, .70), (.20, .70)], False),
    "Watches": ("Accessories", "Watches", "Watch", [
        (.42, .05), (.58, .05), (.58, .95), (.42, .95)], False),
    "Sunglasses": ("Accessories", "Eyewear", "Sunglasses", [
        (.06, .40), (.94, .40), (.94, .46), (.06, .46)], False),
    "Backpacks": ("Accessories", "Bags", "Backpack", [
        (.25, .18), (.75, .18), (.82, .30), (.84, .92), (.16, .92), (.18, .30)], True),
    "Socks": ("Apparel", "Innerwear", "Socks", [
        (.40, .08), (.58, .08), (.58, .62), (.80, .74), (.80, .90), (.46, .90), (.40, .80)], True),
}
GENDERS = {"Dresses": ["Women"], "Handbags": ["Women"]}


def _pattern(kind: str, colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    """Fill a square with the colour in the given pattern."""
    img = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(img)
    accent = tuple(255 - c if sum(colour) < 300 else int(c * 0.45) for c in colour)
    step = rng.randint(size // 14, size // 8)
    if kind == "Striped":
        for y in range(0, size, step):
            draw.rectangle([0, y, size, y + step // 2], fill=accent)
    elif kind == "Checked":
        for x in range(0, size, step):
            draw.rectangle([x, 0, x + step // 3, size], fill=accent)
        for y in range(0, size, step):
            draw.rectangle([0, y, size, y + step // 3], fill=accent)
    elif kind == "Polka Dot":
        r = step // 4
        for y in range(step // 2, size, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, size, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=accent)
    elif kind != "Solid":
        raise ValueError(f"unknown pattern {kind!r}; expected one of {PATTERNS}")
    return img


def _details(draw: ImageDraw.ImageDraw, article: str, s: int) -> None:
    """Draw the features that make a product type recognisable beyond its silhouette."""
    dark, light = (25, 25, 25), (250, 250, 250)
    if article == "Casual Shoes":
        draw.rectangle([.08 * s, .70 * s, .92 * s, .78 * s], fill=light, outline=dark, width=s // 120)
        for i in range(4):
            x = (.30 + .06 * i) * s
            draw.line([x, .42 * s, x + .05 * s, .50 * s], fill=light, width=s // 90)
    elif article == "Watches":
        draw.ellipse([.30 * s, .32 * s, .70 * s, .68 * s], fill=(200, 200, 205), outline=dark, width=s // 60)
        draw.ellipse([.34 * s, .36 * s, .66 * s, .64 * s], fill=light)
        draw.line([.5 * s, .5 * s, .5 * s, .40 * s], fill=dark, width=s // 100)
        draw.line([.5 * s, .5 * s, .58 * s, .52 * s], fill=dark, width=s // 100)
    elif article == "Sunglasses":
        draw.ellipse([.10 * s, .38 * s, .45 * s, .66 * s], fill=dark)
        draw.ellipse([.55 * s, .38 * s, .90 * s, .66 * s], fill=dark)
    elif article == "Handbags":
        draw.arc([.32 * s, .14 * s, .68 * s, .62 * s], 180, 360, fill=dark, width=s // 40)
    elif article == "Caps":
        draw.ellipse([.47 * s, .26 * s, .53 * s, .32 * s], fill=dark)
    elif article == "Backpacks":
        draw.rectangle([.30 * s, .55 * s, .70 * s, .80 * s], outline=dark, width=s // 80)
        draw.line([.30 * s, .62 * s, .70 * s, .62 * s], fill=dark, width=s // 120)


def draw_product(article: str, colour: str, pattern: str, rng: random.Random) -> Image.Image:
    """Draw one packshot of a product type in a colour and pattern, with random pose and backdrop.

    Args:
        article: a key of PRODUCTS (the Kaggle articleType).
        colour: a key of COLOURS.
        pattern: one of PATTERNS (ignored for product types that are never patterned).
        rng: the random source, so that a seed reproduces the image exactly.

    Returns:
        A SIZE x SIZE RGB image.
    """
    s = SIZE * SUPERSAMPLE
    tint = [rng.randint(228, 255) for _ in range(3)]
    canvas = Image.new("RGB", (s, s), tuple(tint))
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    mask = Image.new("L", (s, s), 0)
    polygon = [(x * s, y * s) for x, y in PRODUCTS[article][3]]
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    fill = _pattern(pattern if PRODUCTS[article][4] else "Solid", COLOURS[colour], s, rng)
    layer.paste(fill, (0, 0), mask)
    draw = ImageDraw.Draw(layer)
    draw.polygon(polygon, outline=(40, 40, 40, 255), width=s // 150)
    _details(draw, article, s)
    scale = rng.uniform(0.65, 0.95)
    side = int(s * scale)
    layer = layer.resize((side, side), Image.LANCZOS).rotate(rng.uniform(-15, 15), Image.BICUBIC, expand=True)
    shadow = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    shadow.putalpha(layer.getchannel("A").point(lambda a: a // 5).filter(ImageFilter.GaussianBlur(s // 60)))
    room_x, room_y = max(s - layer.width, 0), max(s - layer.height, 0)
    x = int(room_x * rng.uniform(0.2, 0.8)) - max(layer.width - s, 0) // 2
    y = int(room_y * rng.uniform(0.2, 0.8)) - max(layer.height - s, 0) // 2
    canvas.paste(shadow, (x + s // 80, y + s // 60), shadow)
    canvas.paste(layer, (x, y), layer)
    return canvas.resize((SIZE, SIZE), Image.LANCZOS)


def _display_name(article: str, colour: str, pattern: str, gender: str, rng: random.Random) -> str:
    brand = rng.choice(["Northwind", "Lumen", "Aster & Co", "Kestrel", "Marlow", "Tidewater"])
    noun = PRODUCTS[article][2]
    pattern_word = f"{pattern} " if PRODUCTS[article][4] and pattern != "Solid" else ""
    return f"{brand} {gender} {colour} {pattern_word}{noun}"


def make_catalog(out: Path, n_products: int = 400, seed: int = 7) -> dict[str, int]:
    """Write `n_products` rows (and their images, some broken or missing on purpose) under `out`.

    Args:
        out: the folder to create; it receives `styles.csv` and `images/<id>.jpg`.
        n_products: rows in styles.csv, including the deliberately broken and missing ones.
        seed: the random seed; the same seed writes byte-identical files.

    Returns:
        Counts of what was written: rows, good images, broken images, missing images.
    """
    rng = random.Random(seed)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    articles = sorted(PRODUCTS)
    broken = {5: "truncated", 17: "empty", 29: "text"}
    missing = {11, 23, 41, 53}
    duplicates = {47: 46}  # a re-upload of the same photo under a second id, as real catalogs have
    rows, counts = [], {"rows": 0, "images": 0, "broken": 0, "missing": 0}
    for i in range(n_products):
        pid = 10000 + i
        article = articles[i % len(articles)]
        colour = rng.choice(sorted(COLOURS))
        pattern = rng.choice(PATTERNS)
        gender = rng.choice(GENDERS.get(article, ["Men", "Women", "Unisex"]))
        master, sub = PRODUCTS[article][:2]
        name = _display_name(article, colour, pattern, gender, rng)
        season = rng.choice(["Summer", "Winter", "Fall", "Spring"])
        rows.append([pid, gender, master, sub, article, colour, season, rng.choice([2011, 2012, 2013]),
                     rng.choice(["Casual", "Sports", "Formal"]), name])
        path = images / f"{pid}.jpg"
        img = draw_product(article, colour, pattern, rng)
        counts["rows"] += 1
        if i in missing:
            counts["missing"] += 1
            continue
        if i in broken:
            counts["broken"] += 1
            kind = broken[i]
            if kind == "truncated":
                img.save(path, "JPEG", quality=90)
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 3])
            elif kind == "empty":
                path.write_bytes(b"")
            else:
                path.write_text("this is not an image, it is a text file named .jpg\n")
            continue
        if i in duplicates:
            path.write_bytes((images / f"{10000 + duplicates[i]}.jpg").read_bytes())
        else:
            img.save(path, "JPEG", quality=90)
        counts["images"] += 1
    with open(out / "styles.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return counts


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and write the sample catalog."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (Kaggle layout)")
    parser.add_argument("--n", type=int, default=400, help="rows in styles.csv (default 400)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args(argv)
    if args.n < 60:
        parser.error("--n must be at least 60 so that every product type and broken file appears")
    counts = make_catalog(args.out, args.n, args.seed)
    print(f"wrote {args.out}: {counts['rows']} rows, {counts['images']} images, "
          f"{counts['broken']} broken files, {counts['missing']} rows without an image")


if __name__ == "__main__":
    main()
