"""Words and values the generator draws from: visual attributes, their title words and caption synonyms."""
from __future__ import annotations

# Named colours (RGB). Near neighbours (navy/blue, red/crimson, beige/white, ...) are on purpose:
# they make same-category negatives hard under the lighting changes of the videos.
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 32),
    "white": (238, 238, 232),
    "grey": (128, 128, 132),
    "silver": (188, 192, 198),
    "red": (204, 34, 38),
    "crimson": (146, 18, 44),
    "pink": (240, 142, 172),
    "orange": (240, 128, 32),
    "yellow": (244, 208, 44),
    "beige": (218, 198, 158),
    "brown": (118, 74, 40),
    "olive": (112, 122, 42),
    "green": (44, 150, 64),
    "mint": (152, 220, 182),
    "teal": (22, 128, 130),
    "sky blue": (112, 180, 234),
    "blue": (34, 82, 200),
    "navy": (22, 32, 92),
    "purple": (118, 52, 160),
    "lavender": (182, 162, 222),
}
PATTERNS = ("solid", "striped", "dotted", "checked", "zigzag", "gradient")
TEXTURES = ("smooth", "grainy", "knit", "glossy", "matte")
SHAPES = ("classic", "slim", "wide", "rounded", "boxy")
VISUAL_ATTRIBUTES = ("colour", "accent_colour", "pattern", "texture", "shape")

TITLE_WORDS = {
    "pattern": {"solid": "Solid", "striped": "Striped", "dotted": "Polka Dot", "checked": "Plaid",
                "zigzag": "Chevron", "gradient": "Ombre"},
    "texture": {"smooth": "Smooth", "grainy": "Textured", "knit": "Knit", "glossy": "Glossy", "matte": "Matte"},
    "shape": {"classic": "Classic", "slim": "Slim", "wide": "Oversized", "rounded": "Rounded", "boxy": "Boxy"},
}
DESCRIPTION_WORDS = {
    "pattern": {"solid": "plain", "striped": "striped", "dotted": "polka-dot", "checked": "checked",
                "zigzag": "zigzag", "gradient": "two-tone gradient"},
    "shape": {"classic": "A classic cut.", "slim": "Slim, space-saving design.", "wide": "Oversized for extra room.",
              "rounded": "Soft rounded edges.", "boxy": "Structured, boxy silhouette."},
}
USAGE = {
    "clothes": "Comfortable for everyday wear.",
    "cosmetics": "Gentle on skin and long-lasting.",
    "supplies": "Durable for daily use at home.",
    "furniture": "Fits any living space.",
    "entertainment": "Fun for all ages.",
    "food": "Fresh taste, carefully packed.",
}
PRICE_RANGES = {  # upper category slug -> (low, high) in currency units
    "clothes": (9, 160), "cosmetics": (5, 90), "supplies": (3, 200),
    "furniture": (15, 900), "entertainment": (4, 120), "food": (2, 60),
}
DEFAULT_PRICE_RANGE = (5, 100)
TITLE_SUFFIXES = ("New Arrival", "Best Seller", "Limited Edition", "Premium", "Value Pack", "Gift Idea",
                  "Official Store", "Hot Sale", "2024 Model", "Free Shipping")
BRAND_SYLLABLES = ("lu", "mo", "ra", "ki", "zen", "va", "no", "tri", "sol", "ber", "qi", "xo", "fa", "ly", "dor",
                   "mi", "ta", "ven", "ko", "ria")

# Other wordings that captions use instead of the title's words.
SYNONYMS = {
    "grey": ["gray", "ash"], "silver": ["metallic", "chrome"], "crimson": ["deep red", "burgundy", "wine red"],
    "red": ["scarlet", "cherry red"], "navy": ["dark blue", "midnight blue"], "blue": ["royal blue", "cobalt"],
    "sky blue": ["light blue", "baby blue"], "beige": ["cream", "nude", "tan"], "mint": ["light green", "pastel green"],
    "olive": ["khaki", "army green"], "green": ["emerald", "grass green"], "teal": ["turquoise", "petrol"],
    "lavender": ["lilac", "light purple"], "purple": ["violet", "plum"], "pink": ["rose", "blush"],
    "white": ["ivory", "snow white"], "black": ["jet black", "all black"], "brown": ["chocolate", "coffee brown"],
    "orange": ["tangerine", "coral"], "yellow": ["lemon yellow", "mustard"],
    "solid": ["plain", "single colour"], "striped": ["stripy", "with stripes", "pinstripe"],
    "dotted": ["polka", "spotty", "with dots"], "checked": ["plaid", "checkered", "gingham"],
    "zigzag": ["chevron", "zig-zag"], "gradient": ["ombre", "fade"],
    "smooth": ["soft", "sleek"], "grainy": ["textured", "rough"], "knit": ["ribbed", "woven"],
    "glossy": ["shiny", "glossy af"], "matte": ["velvet", "non-shiny"],
    "classic": ["basic", "regular"], "slim": ["skinny", "narrow"], "wide": ["big", "oversize", "roomy"],
    "rounded": ["round", "curvy"], "boxy": ["square", "chunky"],
    # lower-category names
    "backpack": ["rucksack", "bookbag"], "handbag": ["purse", "tote"], "school bag": ["bookbag", "satchel"],
    "trunk": ["suitcase", "luggage"], "chest bag": ["sling bag"], "inclined shoulder bag": ["crossbody bag"],
    "sports shoes": ["sneakers", "trainers", "kicks"], "casual shoes": ["loafers", "everyday shoes"],
    "high heels": ["heels", "stilettos"], "slippers": ["slides", "house shoes"], "boots": ["booties"],
    "t-shirt": ["tee", "top"], "down jacket": ["puffer", "puffer jacket"], "coat": ["overcoat", "outerwear"],
    "dress": ["gown", "sundress"], "jeans": ["denim", "denims"], "shorts": ["short pants"],
    "sport suit": ["tracksuit"], "swimsuit": ["bikini", "swimwear"], "pajamas": ["pjs", "sleepwear"],
    "motion pants": ["joggers", "sweatpants"], "skirts": ["skirt", "mini skirt"],
    "necklace": ["chain", "choker"], "earrings": ["studs", "hoops"], "watch": ["timepiece", "wristwatch"],
    "glasses": ["specs", "shades"], "hat": ["cap", "beanie"], "bracelet": ["bangle"],
    "lipstick": ["lippie", "lip colour"], "perfume": ["fragrance", "scent"], "eye shadow": ["eyeshadow palette"],
    "cream": ["moisturiser", "lotion"], "sunscreen": ["spf", "sunblock"], "mask": ["sheet mask", "face mask"],
    "shampoo": ["hair wash"], "facial cleanser": ["face wash"], "shower gel": ["body wash"],
    "mobile phone": ["smartphone", "phone"], "headset": ["headphones", "earphones"], "laptop": ["notebook", "pc"],
    "speaker": ["bluetooth speaker"], "charger": ["power adapter"], "keyboard": ["keeb"],
    "toothbrush": ["tooth brush"], "towel": ["bath towel"], "toilet paper": ["tissue", "loo roll"],
    "kitchen knife": ["chef knife"], "light bulb": ["bulb", "led"], "lamps and lanterns": ["lamp", "light"],
    "bottle": ["flask", "tumbler"], "cup": ["mug"], "sofa": ["couch"], "carpet": ["rug"], "pillow": ["cushion"],
    "quilt": ["duvet", "comforter"], "bicycle": ["bike"], "car": ["ride"], "electrical vehicle": ["e-bike", "scooter"],
    "basketball": ["ball"], "plaything": ["toy"], "pet": ["doggo", "kitty"], "fishing rod": ["rod"],
    "candy": ["sweets"], "cookies": ["biscuits"], "icecream": ["ice cream", "gelato"], "drinks": ["beverage"],
    "milk tea": ["boba", "bubble tea"], "red wine": ["wine", "vino"], "coffee beans": ["beans", "espresso beans"],
    "noodles": ["mian"], "ramen": ["instant noodles"], "dumpling": ["dumplings", "jiaozi"],
    "strawberry": ["strawberries"], "apple": ["apples"], "mango": ["mangos"], "banana": ["bananas"],
    "tomato": ["tomatoes"], "potato": ["potatoes", "spuds"], "beef": ["steak"], "prawn": ["shrimp"],
    "egg": ["eggs"], "chicken": ["poultry"],
}
GENERIC_NOUNS = ("this", "it", "this thing", "my new fave", "the item", "this one")
GENERIC_HASHTAGS = ("#fyp", "#foryou", "#viral", "#haul", "#unboxing", "#ootd", "#musthave", "#sale", "#review",
                    "#tiktokmademebuyit", "#trending", "#shopping", "#deal", "#newin", "#aesthetic", "#dailyvlog",
                    "#giveaway", "#explore", "#love", "#happy")
CHATTER = ("so happy today", "weekend vibes", "guess what came in the mail", "link in bio", "rate it 1-10",
           "wait for it", "morning routine", "you asked, I delivered", "part 2", "just vibing", "day in my life",
           "don't skip", "obsessed", "can't stop", "new week new me")
CAPTION_TEMPLATES = ("{phrase}", "my new {phrase}", "obsessed with this {phrase}", "{phrase} haul",
                     "unboxing the {phrase}", "look at this {phrase}!", "finally got the {phrase}",
                     "{phrase} review", "is this {phrase} worth it?", "best {phrase} ever", "{phrase} under $50")
EMOJIS = ("😍", "🔥", "✨", "💯", "🛍️", "❤️", "😂", "👀", "🙌", "📦")
# Text burnt into captured videos (ml.datagen.capture): overlays over the product and title cards.
OVERLAY_TEXTS = ("WAIT FOR IT", "you need this", "50% OFF", "link in bio", "PART 2", "HAUL", "must have",
                 "POV: you found it", "SALE", "new in", "honest review", "10/10")
TITLE_CARD_TEXTS = ("NEW HAUL", "unboxing time", "review", "what I got", "pt. 2", "try-on", "my faves", "GRWM")
