#!/usr/bin/env python3
"""Build the image half of the tokembed demo corpus: page-like images rendered with Pillow.

Outputs (next to this script):
  images/NN-<name>.<ext>   14 pages: a form, tables, charts, a slide, an invoice, a receipt, ...
                           mostly PNG; one JPEG stored sideways with an EXIF orientation tag (as a phone
                           photo of a receipt is), one WebP.
  queries_images.txt       one query per line; the query on line N is answered by image NN-*.

Text is drawn with Pillow's built-in font (``ImageFont.load_default(size=...)``), so the script needs no
font files and no network, and its output is the same on every run. images/ is rewritten on every run.
Usage: python sample_data/make_images.py
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
QUERIES = HERE / "queries_images.txt"
PAGE = (850, 1100)  # US letter at 100 dpi
SLIDE = (1280, 720)
INK, GREY, LIGHT, ACCENT = (20, 20, 30), (110, 110, 120), (225, 228, 235), (35, 90, 170)
PALETTE = [(35, 90, 170), (220, 120, 40), (60, 160, 90), (200, 60, 70), (140, 90, 180), (120, 120, 120)]


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


class Page:
    """A white canvas with a cursor: headings, paragraphs, key/value rows, tables."""

    def __init__(self, size=PAGE, margin: int = 60) -> None:
        self.image = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.image)
        self.margin = margin
        self.y = margin

    @property
    def width(self) -> int:
        return self.image.width - 2 * self.margin

    def text(self, value: str, size: int = 20, fill=INK, x: int | None = None, gap: int = 8) -> None:
        self.draw.text((self.margin if x is None else x, self.y), value, font=font(size), fill=fill)
        self.y += size + gap

    def heading(self, value: str, size: int = 34) -> None:
        self.text(value, size=size, fill=ACCENT, gap=6)
        self.draw.line((self.margin, self.y, self.margin + self.width, self.y), fill=ACCENT, width=3)
        self.y += 18

    def space(self, pixels: int) -> None:
        self.y += pixels

    def field(self, label: str, value: str, size: int = 20) -> None:
        """A form field: label, then the filled-in value on an underline."""
        self.draw.text((self.margin, self.y), label, font=font(size), fill=GREY)
        x = self.margin + 260
        self.draw.text((x, self.y), value, font=font(size), fill=INK)
        self.draw.line((x, self.y + size + 4, self.margin + self.width, self.y + size + 4), fill=LIGHT, width=2)
        self.y += size + 22

    def checkbox(self, label: str, checked: bool, size: int = 20) -> None:
        x, y = self.margin, self.y
        self.draw.rectangle((x, y + 2, x + size, y + size + 2), outline=INK, width=2)
        if checked:
            self.draw.line((x + 4, y + size // 2, x + size // 2, y + size - 2), fill=INK, width=3)
            self.draw.line((x + size // 2, y + size - 2, x + size - 2, y + 4), fill=INK, width=3)
        self.draw.text((x + size + 12, y), label, font=font(size), fill=INK)
        self.y += size + 16

    def table(self, header: list[str], rows: list[list[str]], widths: list[int], size: int = 19) -> None:
        x0, row_height = self.margin, size + 18
        self.draw.rectangle((x0, self.y, x0 + sum(widths), self.y + row_height), fill=LIGHT)
        for index, row in enumerate([header] + rows):
            x = x0
            for cell, width in zip(row, widths):
                self.draw.text((x + 8, self.y + 8), cell, font=font(size), fill=INK if index else ACCENT)
                x += width
            self.y += row_height
            self.draw.line((x0, self.y, x0 + sum(widths), self.y), fill=LIGHT, width=1)
        self.y += 16

    def box(self, xy: tuple[int, int, int, int], label: str, size: int = 18, fill=LIGHT) -> None:
        self.draw.rounded_rectangle(xy, radius=10, fill=fill, outline=ACCENT, width=2)
        left, top, right, bottom = xy
        for number, line in enumerate(label.split("\n")):
            self.draw.text((left + 12, top + 10 + number * (size + 6)), line, font=font(size), fill=INK)


# -- the pages ----------------------------------------------------------------------------------------


def expense_form() -> Image.Image:
    page = Page()
    page.heading("Employee Expense Reimbursement Form")
    page.text("Finance Department - form FIN-07 - submit within 30 days of travel", 16, GREY)
    page.space(20)
    for label, value in [
        ("Employee name", "Maria Okafor"),
        ("Department", "Research & Development"),
        ("Employee ID", "RD-20418"),
        ("Trip purpose", "Berlin conference on applied machine learning"),
        ("Travel dates", "12 March 2024 - 15 March 2024"),
        ("Cost centre", "CC-4410"),
    ]:
        page.field(label, value)
    page.space(10)
    page.text("Expenses", 24, ACCENT)
    page.table(
        ["Date", "Category", "Description", "Amount (EUR)"],
        [
            ["12 Mar", "Airfare", "Lufthansa LH 1162 return", "412.80"],
            ["12 Mar", "Hotel", "Hotel Adlon, 3 nights", "687.00"],
            ["13 Mar", "Registration", "Conference pass", "350.00"],
            ["14 Mar", "Meals", "Team dinner with speakers", "96.40"],
            ["15 Mar", "Taxi", "Hotel to BER airport", "54.20"],
        ],
        [110, 170, 300, 150],
    )
    page.text("Total claimed: EUR 1,600.40", 24)
    page.space(10)
    page.checkbox("Receipts attached for every item", True)
    page.checkbox("Paid with corporate card", False)
    page.checkbox("Manager approval obtained", True)
    page.space(30)
    page.field("Employee signature", "M. Okafor")
    page.field("Approved by", "J. Lindqvist, Head of R&D")
    return page.image


def sales_table() -> Image.Image:
    page = Page()
    page.heading("Quarterly Sales by Region - FY2023")
    page.text("Net revenue in thousands of US dollars. Source: regional sales ledgers.", 16, GREY)
    page.space(16)
    rows = [
        ["North", "1,204", "1,318", "1,291", "1,507"],
        ["South", "986", "1,040", "1,122", "1,188"],
        ["East", "1,432", "1,389", "1,476", "1,962"],
        ["West", "1,110", "1,205", "1,343", "1,401"],
        ["Online", "744", "812", "905", "1,276"],
    ]
    page.table(["Region", "Q1", "Q2", "Q3", "Q4"], rows + [["Total", "5,476", "5,764", "6,137", "7,334"]], [180, 130, 130, 130, 130])
    page.space(10)
    for line in [
        "Highlights",
        "- East had the highest fourth-quarter sales (1,962k), driven by the holiday campaign.",
        "- Online sales grew 71% from Q1 to Q4.",
        "- South remained the smallest physical region all year.",
        "- Full-year revenue: 24,711k, up 12% on FY2022.",
    ]:
        page.text(line, 20 if line != "Highlights" else 24, INK if line != "Highlights" else ACCENT)
    return page.image


def _axes(page: Page, left: int, top: int, right: int, bottom: int) -> None:
    page.draw.line((left, top, left, bottom), fill=INK, width=2)
    page.draw.line((left, bottom, right, bottom), fill=INK, width=2)


def rainfall_chart() -> Image.Image:
    page = Page()
    page.heading("Monthly Rainfall in Lisbon, 2023")
    page.text("Bar chart - precipitation in millimetres per month", 16, GREY)
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    values = [98, 64, 52, 61, 40, 12, 3, 5, 28, 93, 121, 110]
    left, top, right, bottom = 120, 220, 790, 800
    _axes(page, left, top, right, bottom)
    scale = (bottom - top - 40) / max(values)
    step = (right - left) / len(values)
    for tick in range(0, 140, 20):
        y = bottom - tick * scale
        page.draw.line((left - 6, y, left, y), fill=INK)
        page.draw.text((left - 50, y - 9), str(tick), font=font(15), fill=GREY)
    for index, (month, value) in enumerate(zip(months, values)):
        x = left + index * step + 8
        page.draw.rectangle((x, bottom - value * scale, x + step - 16, bottom), fill=ACCENT)
        page.draw.text((x, bottom + 8), month, font=font(15), fill=INK)
        page.draw.text((x, bottom - value * scale - 20), str(value), font=font(14), fill=INK)
    page.y = 850
    page.text("Wettest month: November (121 mm). Driest: July (3 mm).", 20)
    page.text("Annual total: 707 mm, close to the 1991-2020 normal.", 20)
    return page.image


def kubernetes_slide() -> Image.Image:
    page = Page(SLIDE, margin=70)
    page.draw.rectangle((0, 0, SLIDE[0], 110), fill=ACCENT)
    page.draw.text((70, 32), "Migration to Kubernetes: Timeline", font=font(44), fill="white")
    page.y = 150
    for phase, text in [
        ("Q1", "Containerise the billing and search services; build the CI image pipeline"),
        ("Q2", "Staging cluster on three nodes; move internal tools; load tests"),
        ("Q3", "Production cluster; migrate the public API behind a canary"),
        ("Q4", "Decommission the old VM fleet; on-call runbooks; cost review"),
    ]:
        page.draw.ellipse((70, page.y + 4, 96, page.y + 30), fill=PALETTE[1])
        page.draw.text((112, page.y), f"{phase}  {text}", font=font(26), fill=INK)
        page.y += 70
    page.draw.text((70, 640), "Platform team - all-hands, January 2024 - slide 7 of 18", font=font(20), fill=GREY)
    return page.image


def invoice() -> Image.Image:
    page = Page()
    page.draw.text((60, 60), "INVOICE", font=font(48), fill=ACCENT)
    page.draw.text((520, 66), "Bluefin Office Supplies Ltd", font=font(20), fill=INK)
    page.draw.text((520, 92), "14 Harbour Road, Leith EH6 6LX", font=font(16), fill=GREY)
    page.y = 160
    for label, value in [
        ("Invoice number", "INV-2024-0193"),
        ("Invoice date", "5 February 2024"),
        ("Due date", "6 March 2024"),
        ("Bill to", "Northwind Architects, 2 Quay Street, Glasgow"),
        ("Purchase order", "PO-88213"),
    ]:
        page.field(label, value)
    page.space(10)
    page.table(
        ["Item", "Qty", "Unit price", "Amount"],
        [
            ["A4 copier paper, 5-ream box", "12", "GBP 24.50", "GBP 294.00"],
            ["Ergonomic office chair", "3", "GBP 189.00", "GBP 567.00"],
            ["Whiteboard markers, pack of 8", "10", "GBP 6.75", "GBP 67.50"],
            ["Laser toner cartridge", "4", "GBP 58.20", "GBP 232.80"],
        ],
        [330, 70, 150, 180],
    )
    for label, value in [("Subtotal", "GBP 1,161.30"), ("VAT 20%", "GBP 232.26"), ("Total due", "GBP 1,393.56")]:
        page.draw.text((470, page.y), label, font=font(20), fill=GREY)
        page.draw.text((640, page.y), value, font=font(20), fill=INK)
        page.y += 32
    page.space(30)
    page.text("Payment by bank transfer to sort code 80-22-60, account 10293847.", 16, GREY)
    page.text("Thank you for your business.", 16, GREY)
    return page.image


def bakery_receipt() -> Image.Image:
    page = Page((420, 760), margin=30)
    page.draw.text((95, 30), "CORNER BAKERY", font=font(30), fill=INK)
    page.y = 80
    page.text("27 Rue des Martyrs, Paris 9e", 16, GREY, x=80)
    page.text("Ticket 004512   08/04/2024 07:42", 16, GREY, x=60)
    page.space(10)
    page.draw.line((30, page.y, 390, page.y), fill=GREY, width=1)
    page.space(12)
    for item, price in [
        ("2 x Butter croissant", "3.20"),
        ("1 x Pain au chocolat", "1.80"),
        ("1 x Baguette tradition", "1.35"),
        ("2 x Cafe creme", "7.00"),
        ("1 x Apricot tart", "4.50"),
    ]:
        page.draw.text((30, page.y), item, font=font(18), fill=INK)
        page.draw.text((320, page.y), price, font=font(18), fill=INK)
        page.y += 30
    page.draw.line((30, page.y + 4, 390, page.y + 4), fill=GREY, width=1)
    page.y += 16
    page.draw.text((30, page.y), "TOTAL EUR", font=font(22), fill=INK)
    page.draw.text((305, page.y), "17.85", font=font(22), fill=INK)
    page.y += 40
    page.text("Card payment - VAT 5.5% included", 16, GREY)
    page.text("Merci et a bientot !", 18, INK, x=110)
    return page.image


def cpu_line_chart() -> Image.Image:
    page = Page()
    page.heading("Server CPU Utilisation over 24 Hours")
    page.text("Line chart - host api-03, 5-minute averages, 9 January 2024", 16, GREY)
    left, top, right, bottom = 110, 230, 790, 760
    _axes(page, left, top, right, bottom)
    for tick in range(0, 101, 25):
        y = bottom - tick / 100 * (bottom - top)
        page.draw.text((left - 56, y - 9), f"{tick}%", font=font(15), fill=GREY)
        page.draw.line((left, y, right, y), fill=LIGHT)
    points = []
    for hour in range(25):
        load = 18 + 10 * math.sin(hour / 3.0) + (62 if 13 <= hour <= 15 else 0) + (20 if hour in (12, 16) else 0)
        points.append((left + hour * (right - left) / 24, bottom - min(load, 96) / 100 * (bottom - top)))
        if hour % 3 == 0:
            page.draw.text((left + hour * (right - left) / 24 - 10, bottom + 8), f"{hour:02d}h", font=font(14), fill=INK)
    page.draw.line(points, fill=PALETTE[3], width=4)
    page.y = 810
    page.text("Peak: 94% at 14:00 during the nightly-report backfill.", 20)
    page.text("Alert threshold (85%) exceeded for 2 hours 10 minutes.", 20)
    return page.image


def energy_pie_chart() -> Image.Image:
    page = Page()
    page.heading("Household Energy Use by Appliance")
    page.text("Pie chart - share of annual electricity use, 3,100 kWh in total", 16, GREY)
    shares = [
        ("Heating and hot water", 38),
        ("Refrigerator and freezer", 17),
        ("Cooking", 14),
        ("Washing and drying", 12),
        ("Lighting", 9),
        ("Electronics", 10),
    ]
    box = (140, 250, 560, 670)
    start = -90.0
    for (label, share), colour in zip(shares, PALETTE):
        end = start + share * 3.6
        page.draw.pieslice(box, start, end, fill=colour, outline="white", width=2)
        start = end
    page.y = 720
    for (label, share), colour in zip(shares, PALETTE):
        page.draw.rectangle((page.margin, page.y + 2, page.margin + 22, page.y + 24), fill=colour)
        page.text(f"{label}: {share}%", 20, x=page.margin + 36, gap=14)
    return page.image


def org_chart() -> Image.Image:
    page = Page()
    page.heading("Organisation Chart - Helix Robotics")
    boxes = {
        "ceo": ((300, 200, 550, 280), "Chief Executive Officer\nAmara Nwosu"),
        "cto": ((80, 380, 330, 460), "Chief Technology Officer\nDaniel Kowalski"),
        "cfo": ((520, 380, 770, 460), "Chief Financial Officer\nSofia Marquez"),
        "eng": ((40, 580, 240, 660), "Head of Engineering\nLeo Tanaka"),
        "res": ((260, 580, 460, 660), "Head of Research\nPriya Raman"),
        "acc": ((520, 580, 770, 660), "Controller\nBen Adeyemi"),
    }
    for parent, child in [("ceo", "cto"), ("ceo", "cfo"), ("cto", "eng"), ("cto", "res"), ("cfo", "acc")]:
        (pl, pt, pr, pb), (cl, ct, cr, cb) = boxes[parent][0], boxes[child][0]
        page.draw.line(((pl + pr) / 2, pb, (cl + cr) / 2, ct), fill=GREY, width=2)
    for xy, label in boxes.values():
        page.box(xy, label, size=17)
    page.y = 720
    page.text("The Head of Engineering and the Head of Research report to the CTO.", 18, GREY)
    page.text("Updated 1 February 2024 by People Operations.", 18, GREY)
    return page.image


def train_timetable() -> Image.Image:
    page = Page()
    page.heading("Zurich HB to Geneva - Weekday Departures")
    page.text("Timetable valid 10 December 2023 to 14 December 2024", 16, GREY)
    page.space(12)
    rows = [
        ["06:02", "IC 1", "Bern, Lausanne", "08:46", "3"],
        ["07:02", "IC 1", "Bern, Fribourg, Lausanne", "09:46", "3"],
        ["07:32", "IR 15", "Bern, Lausanne, Morges", "10:21", "7"],
        ["08:02", "IC 1", "Bern, Lausanne", "10:46", "3"],
        ["09:02", "IC 1", "Bern, Fribourg, Lausanne", "11:46", "4"],
        ["12:02", "IC 1", "Bern, Lausanne", "14:46", "3"],
        ["17:32", "IR 15", "Bern, Lausanne, Nyon", "20:21", "8"],
        ["18:02", "IC 1", "Bern, Lausanne", "20:46", "3"],
    ]
    page.table(["Departs", "Train", "Via", "Arrives", "Platform"], rows, [120, 100, 300, 120, 110])
    page.text("Journey time 2 h 44 min; seat reservations recommended on Fridays.", 18)
    return page.image


def pancake_recipe() -> Image.Image:
    page = Page()
    page.heading("Lemon Ricotta Pancakes")
    page.text("Serves 4 - preparation 10 minutes - cooking 15 minutes", 18, GREY)
    page.space(12)
    page.text("Ingredients", 24, ACCENT)
    ingredients = ["250 g ricotta", "3 eggs, separated", "180 ml milk", "150 g plain flour", "1 tsp baking powder"]
    for line in ingredients + ["2 tbsp sugar", "zest of 2 lemons", "butter for the pan"]:
        page.text(f"- {line}", 20)
    page.space(12)
    page.text("Method", 24, ACCENT)
    for number, line in enumerate(
        [
            "Whisk ricotta, yolks, milk and lemon zest until smooth.",
            "Fold in flour, baking powder and sugar.",
            "Beat the whites to soft peaks and fold them in gently.",
            "Cook ladlefuls in a buttered pan, 2 minutes per side.",
            "Serve with blueberries and maple syrup.",
        ],
        1,
    ):
        page.text(f"{number}. {line}", 20)
    return page.image


def certificate() -> Image.Image:
    page = Page((1100, 850), margin=80)
    page.draw.rectangle((30, 30, 1070, 820), outline=ACCENT, width=6)
    page.draw.rectangle((48, 48, 1052, 802), outline=PALETTE[1], width=2)
    for y, text, size, colour in [
        (140, "CERTIFICATE OF COMPLETION", 46, ACCENT),
        (240, "This certifies that", 24, GREY),
        (300, "Jonas Eriksen", 44, INK),
        (390, "has successfully completed the course", 24, GREY),
        (450, "Advanced Python: Concurrency and Performance", 32, INK),
        (520, "40 hours - final project graded with distinction", 22, GREY),
        (680, "Issued 22 November 2023 - Certificate no. PY-ADV-7731", 20, GREY),
    ]:
        width = page.draw.textlength(text, font=font(size))
        page.draw.text(((1100 - width) / 2, y), text, font=font(size), fill=colour)
    return page.image


def boarding_pass() -> Image.Image:
    page = Page((1000, 420), margin=40)
    page.draw.rectangle((0, 0, 1000, 80), fill=ACCENT)
    page.draw.text((40, 20), "BOARDING PASS", font=font(36), fill="white")
    page.draw.text((640, 28), "Lufthansa", font=font(28), fill="white")
    page.y = 110
    for label, value, x in [("Passenger", "CHEN / LIWEI MS", 40), ("Flight", "LH 452", 420), ("Date", "18 APR 2024", 620)]:
        page.draw.text((x, page.y), label, font=font(16), fill=GREY)
        page.draw.text((x, page.y + 22), value, font=font(26), fill=INK)
    page.y = 210
    for label, value, x in [("From", "FRA Frankfurt", 40), ("To", "SFO San Francisco", 300), ("Seat", "32A", 620), ("Gate", "Z25", 760)]:
        page.draw.text((x, page.y), label, font=font(16), fill=GREY)
        page.draw.text((x, page.y + 22), value, font=font(26), fill=INK)
    page.draw.text((40, 320), "Boarding 12:55 - departure 13:40 - group 4 - zone B", font=font(20), fill=INK)
    for index in range(60):  # a fake barcode
        width = 2 + (index * 7) % 5
        page.draw.rectangle((600 + index * 6, 300, 600 + index * 6 + width // 2, 380), fill=INK)
    return page.image


def nutrition_label() -> Image.Image:
    page = Page((600, 900), margin=50)
    page.draw.text((50, 50), "Nutrition Facts", font=font(44), fill=INK)
    page.y = 110
    page.text("Honey Almond Granola - serving size 1/2 cup (55 g)", 18)
    page.draw.rectangle((50, page.y, 550, page.y + 10), fill=INK)
    page.y += 24
    page.draw.text((50, page.y), "Calories", font=font(32), fill=INK)
    page.draw.text((470, page.y), "250", font=font(32), fill=INK)
    page.y += 56
    for label, value in [
        ("Total Fat 9 g", "12%"),
        ("Saturated Fat 1.5 g", "8%"),
        ("Cholesterol 0 mg", "0%"),
        ("Sodium 95 mg", "4%"),
        ("Total Carbohydrate 38 g", "14%"),
        ("Dietary Fiber 4 g", "14%"),
        ("Total Sugars 12 g", ""),
        ("Protein 6 g", ""),
        ("Iron 1.8 mg", "10%"),
    ]:
        page.draw.text((50, page.y), label, font=font(20), fill=INK)
        page.draw.text((480, page.y), value, font=font(20), fill=INK)
        page.y += 34
        page.draw.line((50, page.y - 6, 550, page.y - 6), fill=GREY)
    page.space(12)
    page.text("Ingredients: rolled oats, almonds, honey, sunflower oil.", 16, GREY)
    return page.image


# (file name, page builder, query answered by the page)
PAGES = [
    ("01-expense-form.png", expense_form, "expense reimbursement form for the Berlin machine learning conference"),
    ("02-sales-table.png", sales_table, "which region had the highest sales in the fourth quarter of 2023"),
    ("03-rainfall-chart.png", rainfall_chart, "bar chart of monthly rainfall in Lisbon"),
    ("04-kubernetes-slide.png", kubernetes_slide, "timeline for migrating services to Kubernetes"),
    ("05-invoice.png", invoice, "invoice total due from Bluefin Office Supplies"),
    ("06-bakery-receipt.jpg", bakery_receipt, "receipt for croissants and coffee at the Corner Bakery"),
    ("07-cpu-chart.png", cpu_line_chart, "when did server CPU utilisation peak during the day"),
    ("08-energy-pie-chart.webp", energy_pie_chart, "share of household electricity used by the refrigerator"),
    ("09-org-chart.png", org_chart, "who reports to the chief technology officer"),
    ("10-train-timetable.png", train_timetable, "departure times of trains from Zurich to Geneva"),
    ("11-pancake-recipe.png", pancake_recipe, "ingredients for lemon ricotta pancakes"),
    ("12-certificate.png", certificate, "certificate of completion for the advanced Python course"),
    ("13-boarding-pass.png", boarding_pass, "seat number on the boarding pass for flight LH 452 to San Francisco"),
    ("14-nutrition-label.png", nutrition_label, "how many calories in a serving of granola"),
]

EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # "rotate 90 degrees clockwise to display": how a phone stores a sideways photo


def save(image: Image.Image, path: Path) -> None:
    if path.suffix == ".jpg":
        # Stored sideways with an EXIF orientation tag; readers must apply it (ImageOps.exif_transpose).
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATE_90_CW
        image.rotate(90, expand=True).save(path, quality=90, exif=exif)
    elif path.suffix == ".webp":
        image.save(path, lossless=True)
    else:
        image.save(path, optimize=True)


def main() -> None:
    if IMAGES.exists():
        shutil.rmtree(IMAGES)
    IMAGES.mkdir()
    for name, build, _query in PAGES:
        save(build(), IMAGES / name)
    QUERIES.write_text("".join(query + "\n" for _name, _build, query in PAGES), encoding="utf-8")
    print(f"wrote {len(PAGES)} images to {IMAGES} and {len(PAGES)} queries to {QUERIES}")


if __name__ == "__main__":
    main()
