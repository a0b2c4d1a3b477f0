"""Synthetic pretraining prose and Alpaca-format instruction data for the pocket model."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from lab_utils.core.paths import atomic_write_text

T = TypeVar("T")
Record = dict[str, str]
HeldoutRecord = dict[str, str | None]
Template = tuple[str, str]  # (instruction, input); either may hold {placeholders}

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "data" / "pocket_alpaca"
SEED_PROMPT = "First, tell me the capital of France"
FORBIDDEN = ("###", "Instruction", "Response", "Below is an instruction")

# Countries with one undisputed capital, spelled in plain ASCII. Left out on purpose: countries whose
# capital is disputed, split, moving or named like the country (e.g. Bolivia, South Africa, Netherlands,
# Switzerland, Israel, Sri Lanka, Indonesia, Luxembourg, Singapore).
COUNTRIES: list[tuple[str, str]] = [
    tuple(pair.split(":"))  # type: ignore[misc]
    for pair in (
        # Europe
        "France:Paris|Germany:Berlin|Italy:Rome|Spain:Madrid|Portugal:Lisbon|United Kingdom:London|"
        "Ireland:Dublin|Belgium:Brussels|Austria:Vienna|Poland:Warsaw|Czech Republic:Prague|"
        "Slovakia:Bratislava|Hungary:Budapest|Romania:Bucharest|Bulgaria:Sofia|Greece:Athens|Serbia:Belgrade|"
        "Croatia:Zagreb|Slovenia:Ljubljana|Bosnia and Herzegovina:Sarajevo|Albania:Tirana|"
        "North Macedonia:Skopje|Denmark:Copenhagen|Norway:Oslo|Sweden:Stockholm|Finland:Helsinki|"
        "Iceland:Reykjavik|Estonia:Tallinn|Latvia:Riga|Lithuania:Vilnius|Ukraine:Kyiv|Belarus:Minsk|"
        "Moldova:Chisinau|Russia:Moscow|Malta:Valletta|Cyprus:Nicosia|Andorra:Andorra la Vella|"
        "Liechtenstein:Vaduz|Georgia:Tbilisi|Armenia:Yerevan|Azerbaijan:Baku|"
        # Asia
        "Japan:Tokyo|China:Beijing|South Korea:Seoul|North Korea:Pyongyang|Mongolia:Ulaanbaatar|"
        "India:New Delhi|Pakistan:Islamabad|Bangladesh:Dhaka|Nepal:Kathmandu|Bhutan:Thimphu|Afghanistan:Kabul|"
        "Iran:Tehran|Iraq:Baghdad|Syria:Damascus|Lebanon:Beirut|Jordan:Amman|Saudi Arabia:Riyadh|"
        "Kuwait:Kuwait City|Qatar:Doha|Bahrain:Manama|United Arab Emirates:Abu Dhabi|Oman:Muscat|"
        "Turkey:Ankara|Uzbekistan:Tashkent|Turkmenistan:Ashgabat|Kyrgyzstan:Bishkek|Tajikistan:Dushanbe|"
        "Thailand:Bangkok|Vietnam:Hanoi|Laos:Vientiane|Cambodia:Phnom Penh|Philippines:Manila|Maldives:Male|"
        "Brunei:Bandar Seri Begawan|"
        # Africa
        "Egypt:Cairo|Libya:Tripoli|Tunisia:Tunis|Algeria:Algiers|Morocco:Rabat|South Sudan:Juba|"
        "Ethiopia:Addis Ababa|Eritrea:Asmara|Somalia:Mogadishu|Kenya:Nairobi|Uganda:Kampala|Rwanda:Kigali|"
        "Zambia:Lusaka|Zimbabwe:Harare|Mozambique:Maputo|Malawi:Lilongwe|Angola:Luanda|Namibia:Windhoek|"
        "Botswana:Gaborone|Madagascar:Antananarivo|Nigeria:Abuja|Ghana:Accra|Senegal:Dakar|Mali:Bamako|"
        "Niger:Niamey|Cameroon:Yaounde|Gabon:Libreville|Liberia:Monrovia|Sierra Leone:Freetown|Guinea:Conakry|"
        "Burkina Faso:Ouagadougou|Togo:Lome|Mauritania:Nouakchott|Gambia:Banjul|Lesotho:Maseru|"
        "Mauritius:Port Louis|Central African Republic:Bangui|Cape Verde:Praia|Seychelles:Victoria|"
        "Comoros:Moroni|Guinea-Bissau:Bissau|"
        # Americas
        "United States:Washington|Canada:Ottawa|Mexico:Mexico City|Guatemala:Guatemala City|Belize:Belmopan|"
        "Honduras:Tegucigalpa|El Salvador:San Salvador|Nicaragua:Managua|Costa Rica:San Jose|"
        "Panama:Panama City|Cuba:Havana|Jamaica:Kingston|Haiti:Port-au-Prince|"
        "Dominican Republic:Santo Domingo|Bahamas:Nassau|Barbados:Bridgetown|"
        "Trinidad and Tobago:Port of Spain|Colombia:Bogota|Venezuela:Caracas|Ecuador:Quito|Peru:Lima|"
        "Brazil:Brasilia|Argentina:Buenos Aires|Chile:Santiago|Uruguay:Montevideo|Paraguay:Asuncion|"
        "Guyana:Georgetown|Suriname:Paramaribo|"
        # Oceania
        "Australia:Canberra|New Zealand:Wellington|Fiji:Suva|Papua New Guinea:Port Moresby|Samoa:Apia|"
        "Vanuatu:Port Vila|Solomon Islands:Honiara"
    ).split("|")
]

# Country names that take "the" in a sentence ("the capital of the United Kingdom").
_WITH_THE = frozenset(
    {
        "United Kingdom",
        "United States",
        "Czech Republic",
        "Dominican Republic",
        "Central African Republic",
        "Bahamas",
        "Gambia",
        "Maldives",
        "United Arab Emirates",
        "Philippines",
        "Solomon Islands",
    }
)

SPLIT_SEED = 20240607  # fixed: the split must not move when the data seed changes
SFT_FRACTION = 0.65

WORDS: list[str] = (
    "cat dog bird fish horse cow sheep goat mouse rabbit tiger lion bear wolf fox duck frog snake whale "
    "shark apple banana orange grape lemon cherry peach pear melon bread cheese butter milk water juice "
    "rice soup cake honey sugar house door window table chair bed lamp clock book pen pencil paper cup "
    "plate spoon fork knife bottle box bag river lake ocean sea mountain hill forest tree flower grass "
    "leaf rock stone sand island desert valley beach cloud rain snow wind storm sun moon star sky fire "
    "ice light car bus train boat ship plane bike road bridge street city town village school market "
    "garden park farm castle tent king queen child friend doctor teacher farmer baker sailor pilot shirt "
    "shoe hat coat dress sock glove scarf ring watch song music drum piano guitar story basket game ball "
    "kite money coin gold silver iron paint color shape circle square"
).split()

# (unit, units, target unit, target units, factor)
UNITS: list[tuple[str, str, str, str, int]] = [
    ("kilometer", "kilometers", "meter", "meters", 1000),
    ("hour", "hours", "minute", "minutes", 60),
    ("kilogram", "kilograms", "gram", "grams", 1000),
    ("minute", "minutes", "second", "seconds", 60),
    ("meter", "meters", "centimeter", "centimeters", 100),
]
OPERATIONS = ("plus", "minus", "times")
WORD_TASKS = ("reverse", "upper", "count", "first")
MAX_NUMBER = 20

# ---------------------------------------------------------------------------------------------------
# Facts: the one canonical sentence for each kind of fact, shared by pretraining, SFT and held-out data.
# ---------------------------------------------------------------------------------------------------


def country_phrase(country: str) -> str:
    """The country's name as used inside a sentence, with "the" where English needs it."""
    return f"the {country}" if country in _WITH_THE else country


def _cap(text: str) -> str:
    """The text with its first character in upper case."""
    return text[:1].upper() + text[1:]


def capital_fact(country: str, capital: str) -> str:
    """The canonical capital sentence, e.g. "The capital of France is Paris."."""
    return f"The capital of {country_phrase(country)} is {capital}."


def compute(op: str, a: int, b: int) -> int:
    """The result of an arithmetic operation named in words."""
    return {"plus": a + b, "minus": a - b, "times": a * b}[op]


def arithmetic_fact(op: str, a: int, b: int) -> str:
    """The canonical arithmetic sentence, e.g. "7 plus 5 is 12."."""
    return f"{a} {op} {b} is {compute(op, a, b)}."


def _amount(value: int, singular: str, plural: str) -> str:
    """A number with its unit, singular for one."""
    return f"{value} {singular if value == 1 else plural}"


def conversion_parts(unit: int, value: int) -> tuple[str, str, str, int]:
    """(source amount, target unit plural, target amount, result) of converting value in UNITS[unit]."""
    src, srcs, dst, dsts, factor = UNITS[unit]
    result = value * factor
    return _amount(value, src, srcs), dsts, _amount(result, dst, dsts), result


def conversion_fact(unit: int, value: int) -> str:
    """The canonical conversion sentence, e.g. "3 kilometers is 3000 meters."."""
    source, _, target, _ = conversion_parts(unit, value)
    return f"{source} is {target}."


def word_answer(task: str, word: str) -> str:
    """The short answer of a word task: reversed, upper-cased, letter count or first letter."""
    return {"reverse": word[::-1], "upper": word.upper(), "count": str(len(word)), "first": word[0]}[task]


def word_fact(task: str, word: str) -> str:
    """The canonical word-task sentence, e.g. "The word cat spelled backwards is tac."."""
    answer = word_answer(task, word)
    return {
        "reverse": f"The word {word} spelled backwards is {answer}.",
        "upper": f"The word {word} in capital letters is {answer}.",
        "count": f"The word {word} has {answer} letters.",
        "first": f"The word {word} starts with the letter {answer}.",
    }[task]


def list_in_words(numbers: Sequence[int]) -> str:
    """Numbers as written in a sentence, e.g. "5, 2 and 9"."""
    items = [str(n) for n in numbers]
    return ", ".join(items[:-1]) + " and " + items[-1]


def sort_answer(numbers: Sequence[int]) -> str:
    """The numbers sorted and comma-separated, e.g. "2, 5, 9"."""
    return ", ".join(str(n) for n in sorted(numbers))


def sort_fact(numbers: Sequence[int]) -> str:
    """The canonical sort sentence, e.g. "The numbers 5, 2 and 9 in ascending order are 2, 5, 9."."""
    return f"The numbers {list_in_words(numbers)} in ascending order are {sort_answer(numbers)}."


# ---------------------------------------------------------------------------------------------------
# The country split
# ---------------------------------------------------------------------------------------------------


def _split_countries() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A fixed ~65/35 split of COUNTRIES; France is always SFT and Peru always pretraining-only."""
    pinned_sft, pinned_pre = "France", "Peru"
    rest = [c for c in COUNTRIES if c[0] not in (pinned_sft, pinned_pre)]
    random.Random(SPLIT_SEED).shuffle(rest)
    n_sft = round(len(COUNTRIES) * SFT_FRACTION) - 1
    sft_names = {pinned_sft} | {c[0] for c in rest[:n_sft]}
    sft = [c for c in COUNTRIES if c[0] in sft_names]
    pre = [c for c in COUNTRIES if c[0] not in sft_names]
    return sft, pre


SFT_COUNTRIES, PRETRAIN_ONLY_COUNTRIES = _split_countries()

# ---------------------------------------------------------------------------------------------------
# Random picks shared by all generators
# ---------------------------------------------------------------------------------------------------


class _Deck(Generic[T]):
    """Deals items in shuffled rounds, so every item comes up equally often."""

    def __init__(self, items: Sequence[T], rng: random.Random) -> None:
        """A deck over `items` shuffled by `rng`."""
        self._items = list(items)
        self._rng = rng
        self._pile: list[T] = []

    def deal(self) -> T:
        """The next item, reshuffling when a round is over."""
        if not self._pile:
            self._pile = self._items[:]
            self._rng.shuffle(self._pile)
        return self._pile.pop()


def _pick_arithmetic(rng: random.Random) -> tuple[str, int, int]:
    """A random (operation, a, b) with a non-negative result."""
    op = rng.choice(OPERATIONS)
    a, b = rng.randint(0, MAX_NUMBER), rng.randint(0, MAX_NUMBER)
    if op == "minus" and a < b:
        a, b = b, a
    return op, a, b


def _pick_numbers(rng: random.Random) -> tuple[int, ...]:
    """3 to 5 distinct numbers from 0 to MAX_NUMBER, unsorted."""
    numbers = rng.sample(range(MAX_NUMBER + 1), rng.randint(3, 5))
    while numbers == sorted(numbers):
        rng.shuffle(numbers)
    return tuple(numbers)


# ---------------------------------------------------------------------------------------------------
# Pretraining documents
# ---------------------------------------------------------------------------------------------------

_CAPITAL_PROSE = [
    "The capital of {c} is {k}.",
    "{k} is the capital of {c}.",
    "{c} has {k} as its capital.",
    "The capital city of {c} is {k}.",
    "{k} is the capital city of {c}.",
    "In {c}, the capital is {k}.",
    "{k} is a city in {c}, and it is the capital of {c}.",
]
_ARITHMETIC_PROSE = {
    "plus": ["{a} plus {b} is {r}.", "{a} plus {b} equals {r}.", "If you add {a} and {b}, you get {r}."],
    "minus": ["{a} minus {b} is {r}.", "{a} minus {b} equals {r}.", "If you take {b} away from {a}, you get {r}."],
    "times": ["{a} times {b} is {r}.", "{a} times {b} equals {r}.", "{a} multiplied by {b} is {r}."],
}
_CONVERSION_PROSE = ["{s} is {t}.", "There are {t} in {s}.", "{s} is the same as {t}."]
_WORD_PROSE = {
    "reverse": ["Spelled backwards, the word {w} is {x}."],
    "upper": ["Written in capital letters, the word {w} is {x}."],
    "count": ["There are {x} letters in the word {w}."],
    "first": ["The first letter of the word {w} is {x}."],
}
_SORT_PROSE = ["Sorted from smallest to largest, the numbers {l} are {s}."]

_TOPIC_INTROS = {
    "geography": [
        "Every country has a capital city.",
        "Here are some facts about countries and their capitals.",
        "A capital is the city where the government of a country meets.",
    ],
    "arithmetic": [
        "Here are some facts about numbers.",
        "Adding zero to a number does not change it.",
        "Multiplying a number by one does not change it.",
    ],
    "conversion": [
        "There are 1000 meters in a kilometer.",
        "There are 60 minutes in an hour.",
        "There are 1000 grams in a kilogram.",
        "There are 60 seconds in a minute.",
        "There are 100 centimeters in a meter.",
    ],
    "word": [
        "Every word is made of letters.",
        "Here are some facts about words and letters.",
        "A word spelled backwards is read from its last letter to its first.",
    ],
    "sort": ["Ascending order means from the smallest number to the largest.", "Here are some numbers put in order."],
}
_TOPIC_WEIGHTS = {"geography": 0.4, "arithmetic": 0.2, "conversion": 0.15, "word": 0.15, "sort": 0.1}
FAQ_FRACTION = 0.25


def _canonical_or(rng: random.Random, canonical: str, variants: Sequence[str], **fields: object) -> str:
    """The canonical sentence most of the time, else one of the variant templates filled in."""
    if rng.random() < 0.6:
        return canonical
    return _cap(rng.choice(variants).format(**fields))


def _prose_geography(rng: random.Random, deck: _Deck[tuple[str, str]]) -> str:
    """A sentence stating a country's capital."""
    country, capital = deck.deal()
    return _cap(rng.choice(_CAPITAL_PROSE).format(c=country_phrase(country), k=capital))


def _prose_arithmetic(rng: random.Random, deck: _Deck[tuple[str, str]]) -> str:
    """A sentence stating a sum, difference or product."""
    op, a, b = _pick_arithmetic(rng)
    canonical = arithmetic_fact(op, a, b)
    return _canonical_or(rng, canonical, _ARITHMETIC_PROSE[op], a=a, b=b, r=compute(op, a, b))


def _prose_conversion(rng: random.Random, deck: _Deck[tuple[str, str]]) -> str:
    """A sentence stating a unit conversion."""
    unit, value = rng.randrange(len(UNITS)), rng.randint(1, MAX_NUMBER)
    source, _, target, _ = conversion_parts(unit, value)
    return _canonical_or(rng, conversion_fact(unit, value), _CONVERSION_PROSE, s=source, t=target)


def _prose_word(rng: random.Random, deck: _Deck[tuple[str, str]]) -> str:
    """A sentence stating a fact about the letters of a word."""
    task, word = rng.choice(WORD_TASKS), rng.choice(WORDS)
    return _canonical_or(rng, word_fact(task, word), _WORD_PROSE[task], w=word, x=word_answer(task, word))


def _prose_sort(rng: random.Random, deck: _Deck[tuple[str, str]]) -> str:
    """A sentence stating some numbers in ascending order."""
    numbers = _pick_numbers(rng)
    return _canonical_or(rng, sort_fact(numbers), _SORT_PROSE, l=list_in_words(numbers), s=sort_answer(numbers))


_PROSE: dict[str, Callable[[random.Random, _Deck[tuple[str, str]]], str]] = {
    "geography": _prose_geography,
    "arithmetic": _prose_arithmetic,
    "conversion": _prose_conversion,
    "word": _prose_word,
    "sort": _prose_sort,
}


def _faq_geography(rng: random.Random, deck: _Deck[tuple[str, str]]) -> tuple[str, str]:
    """A question and answer about a country's capital."""
    country, capital = deck.deal()
    template = rng.choice(
        ["What is the capital of {c}?", "Which city is the capital of {c}?", "What city is the capital of {c}?"]
    )
    return template.format(c=country_phrase(country)), capital_fact(country, capital)


def _faq_arithmetic(rng: random.Random, deck: _Deck[tuple[str, str]]) -> tuple[str, str]:
    """A question and answer about a sum, difference or product."""
    op, a, b = _pick_arithmetic(rng)
    return f"What is {a} {op} {b}?", arithmetic_fact(op, a, b)


def _faq_conversion(rng: random.Random, deck: _Deck[tuple[str, str]]) -> tuple[str, str]:
    """A question and answer about a unit conversion."""
    unit, value = rng.randrange(len(UNITS)), rng.randint(1, MAX_NUMBER)
    source, target_units, _, _ = conversion_parts(unit, value)
    return f"How many {target_units} are in {source}?", conversion_fact(unit, value)


def _faq_word(rng: random.Random, deck: _Deck[tuple[str, str]]) -> tuple[str, str]:
    """A question and answer about the letters of a word."""
    task, word = rng.choice(WORD_TASKS), rng.choice(WORDS)
    question = {
        "reverse": f"What is the word {word} spelled backwards?",
        "upper": f"What is the word {word} in capital letters?",
        "count": f"How many letters are in the word {word}?",
        "first": f"What is the first letter of the word {word}?",
    }[task]
    return question, word_fact(task, word)


def _faq_sort(rng: random.Random, deck: _Deck[tuple[str, str]]) -> tuple[str, str]:
    """A question and answer about putting numbers in order."""
    numbers = _pick_numbers(rng)
    return f"What are the numbers {list_in_words(numbers)} in ascending order?", sort_fact(numbers)


_FAQ: dict[str, Callable[[random.Random, _Deck[tuple[str, str]]], tuple[str, str]]] = {
    "geography": _faq_geography,
    "arithmetic": _faq_arithmetic,
    "conversion": _faq_conversion,
    "word": _faq_word,
    "sort": _faq_sort,
}


def _pick_topic(rng: random.Random) -> str:
    """A topic drawn by _TOPIC_WEIGHTS."""
    return rng.choices(list(_TOPIC_WEIGHTS), weights=list(_TOPIC_WEIGHTS.values()))[0]


def _prose_document(rng: random.Random, deck: _Deck[tuple[str, str]], n_sentences: int) -> str:
    """Paragraphs of facts, mostly on one topic, like a page of a simple encyclopedia."""
    topic = _pick_topic(rng)
    sentences = [rng.choice(_TOPIC_INTROS[topic])]
    while len(sentences) < n_sentences:
        this = topic if rng.random() < 0.65 else _pick_topic(rng)
        sentences.append(_PROSE[this](rng, deck))
    paragraphs: list[str] = []
    start = 0
    while start < len(sentences):
        size = rng.randint(4, 8)
        paragraphs.append(" ".join(sentences[start : start + size]))
        start += size
    return "\n".join(paragraphs)


def _faq_document(rng: random.Random, deck: _Deck[tuple[str, str]], n_pairs: int) -> str:
    """A page of "Q: ... A: ..." lines on mixed topics."""
    lines = ["Questions and answers"]
    for _ in range(n_pairs):
        question, answer = _FAQ[_pick_topic(rng)](rng, deck)
        lines.append(f"Q: {question} A: {answer}")
    return "\n".join(lines)


def make_pretraining_documents(n_docs: int = 3000, seed: int = 0, sentences_per_doc: int = 24) -> list[str]:
    """Plain-prose pretraining documents stating facts about every country, numbers, units and words."""
    rng = random.Random(f"pocket-pretrain-{seed}")
    deck = _Deck(COUNTRIES, rng)
    docs: list[str] = []
    for _ in range(n_docs):
        jitter = rng.randint(-3, 3)
        if rng.random() < FAQ_FRACTION:
            docs.append(_faq_document(rng, deck, max(1, round(sentences_per_doc * 5 / 6) + jitter)))
        else:
            docs.append(_prose_document(rng, deck, max(2, sentences_per_doc + jitter)))
    return docs


# ---------------------------------------------------------------------------------------------------
# Instruction templates
# ---------------------------------------------------------------------------------------------------

CAPITAL_TEMPLATES: list[Template] = [
    ("What is the capital of {c}?", ""),
    ("Name the capital city of {c}.", ""),
    ("Which city is the capital of {c}?", ""),
    ("Tell me the capital of {c}.", ""),
    ("What city is the capital of {c}?", ""),
    ("What is the capital city of {c}?", ""),
    ("What is the capital of this country?", "{n}"),
    ("Name the capital of the country below.", "{n}"),
]
# Phrasings never used in training: they test whether SFT generalises to new wording.
HELDOUT_CAPITAL_TEMPLATES: list[Template] = [
    ("Do you know the capital of {c}?", ""),
    ("Can you tell me the capital of {c}?", ""),
    ("Which city serves as the capital of {c}?", ""),
    ("I would like to know the capital of {c}.", ""),
    ("Please name the capital of {c}.", ""),
    ("What is the name of the capital of {c}?", ""),
]
CAPITALS_PER_COUNTRY = 6

ARITHMETIC_TEMPLATES: dict[str, list[Template]] = {
    "plus": [
        ("What is {a} plus {b}?", ""),
        ("Add {a} and {b}.", ""),
        ("Calculate {a} plus {b}.", ""),
        ("What is the sum of {a} and {b}?", ""),
        ("Add these two numbers.", "{a} and {b}"),
        ("First, tell me what {a} plus {b} is", ""),
    ],
    "minus": [
        ("What is {a} minus {b}?", ""),
        ("Subtract {b} from {a}.", ""),
        ("Calculate {a} minus {b}.", ""),
        ("Subtract the second number from the first.", "{a} and {b}"),
    ],
    "times": [
        ("What is {a} times {b}?", ""),
        ("Multiply {a} by {b}.", ""),
        ("Calculate {a} times {b}.", ""),
        ("What is the product of {a} and {b}?", ""),
        ("Multiply these two numbers.", "{a} and {b}"),
        ("First, tell me what {a} times {b} is", ""),
    ],
}
CONVERSION_TEMPLATES: list[Template] = [
    ("How many {u} are in {s}?", ""),
    ("Convert {s} to {u}.", ""),
    ("What is {s} in {u}?", ""),
    ("Convert this amount to {u}.", "{s}"),
    ("First, tell me how many {u} are in {s}", ""),
]
WORD_TEMPLATES: dict[str, list[Template]] = {
    "reverse": [
        ("Spell the word {w} backwards.", ""),
        ("Reverse the word {w}.", ""),
        ("What is {w} spelled backwards?", ""),
        ("Spell this word backwards.", "{w}"),
        ("First, tell me the word {w} spelled backwards", ""),
    ],
    "upper": [
        ("Write the word {w} in capital letters.", ""),
        ("Convert the word {w} to uppercase.", ""),
        ("Write this word in capital letters.", "{w}"),
    ],
    "count": [
        ("How many letters are in the word {w}?", ""),
        ("Count the letters in the word {w}.", ""),
        ("Count the letters in this word.", "{w}"),
    ],
    "first": [
        ("What is the first letter of the word {w}?", ""),
        ("Which letter does the word {w} start with?", ""),
        ("What is the first letter of this word?", "{w}"),
    ],
}
SORT_TEMPLATES: list[Template] = [
    ("Sort these numbers in ascending order.", "{l}"),
    ("Put these numbers in order from smallest to largest.", "{l}"),
    ("Arrange the following numbers in ascending order.", "{l}"),
    ("Sort the numbers below from lowest to highest.", "{l}"),
]

GENERAL_TRAIN: list[tuple[str, str]] = [
    ("Give me a synonym for happy.", "A synonym for happy is glad."),
    ("Suggest a name for a pet cat.", "A good name for a pet cat is Whiskers."),
    ("Say hello in Spanish.", "Hello in Spanish is hola."),
    ("What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("Write a short greeting for a friend.", "Hi there, it is great to see you again!"),
    ("Give me a synonym for big.", "A synonym for big is large."),
    ("Give me an antonym for hot.", "An antonym for hot is cold."),
    ("Give me an antonym for up.", "An antonym for up is down."),
    ("Say thank you in French.", "Thank you in French is merci."),
    ("Say goodbye in German.", "Goodbye in German is auf Wiedersehen."),
    ("How many days are in a week?", "There are 7 days in a week."),
    ("How many months are in a year?", "There are 12 months in a year."),
    ("What do bees make?", "Bees make honey."),
    ("What color is grass?", "Grass is green."),
    ("Name a fruit that is yellow.", "A banana is a yellow fruit."),
    ("Name an animal that can fly.", "A bird is an animal that can fly."),
    ("What is the opposite of night?", "The opposite of night is day."),
    ("Suggest a name for a pet dog.", "A good name for a pet dog is Buddy."),
    ("Write a short sentence about the sea.", "The sea is wide, blue and full of fish."),
    ("Give me a word that rhymes with cat.", "A word that rhymes with cat is hat."),
    ("Give me a word that rhymes with moon.", "A word that rhymes with moon is spoon."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("How many legs does a spider have?", "A spider has 8 legs."),
    ("Where do fish live?", "Fish live in water."),
    ("Tell me a fun fact about the moon.", "The moon has no air, so there is no wind there."),
    ("Write a short thank-you note to a teacher.", "Thank you for teaching me so much this year!"),
    ("Suggest a healthy snack.", "An apple is a healthy snack."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("What do you call a baby dog?", "A baby dog is called a puppy."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("What is the plural of child?", "The plural of child is children."),
    ("Give me a synonym for fast.", "A synonym for fast is quick."),
    ("Give me an antonym for old.", "An antonym for old is new."),
    ("Say good morning in Italian.", "Good morning in Italian is buongiorno."),
    ("What is the largest ocean on Earth?", "The largest ocean on Earth is the Pacific Ocean."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("Write a short sentence about a dog.", "The dog wagged its tail and ran to the door."),
    ("Describe the sun in one sentence.", "The sun is a hot, bright star at the center of our solar system."),
    ("Suggest a name for a goldfish.", "A good name for a goldfish is Bubbles."),
    ("What do plants need to grow?", "Plants need sunlight, water and air to grow."),
    ("Give me a tip for sleeping well.", "Go to bed at the same time every night."),
    ("At what temperature does water boil?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many sides does a triangle have?", "A triangle has 3 sides."),
    ("Say please in Spanish.", "Please in Spanish is por favor."),
    ("Write a short greeting for a birthday card.", "Happy birthday, and I hope your day is full of joy!"),
    ("What is the opposite of empty?", "The opposite of empty is full."),
    ("Name a color of the rainbow.", "Red is a color of the rainbow."),
    ("Give me a word that means very large.", "A word that means very large is huge."),
]
GENERAL_HELDOUT: list[tuple[str, str]] = [
    ("Give me a synonym for sad.", "A synonym for sad is unhappy."),
    ("Suggest a name for a pet rabbit.", "A good name for a pet rabbit is Clover."),
    ("Say hello in French.", "Hello in French is bonjour."),
    ("What color is snow?", "Snow is white."),
    ("Write a short greeting for a neighbor.", "Good morning, I hope you have a lovely day!"),
    ("Give me an antonym for small.", "An antonym for small is big."),
    ("How many legs does a dog have?", "A dog has 4 legs."),
    ("What do you call a baby cow?", "A baby cow is called a calf."),
    ("What is the plural of foot?", "The plural of foot is feet."),
    ("Give me a word that rhymes with tree.", "A word that rhymes with tree is bee."),
    ("How many days are in a year?", "There are 365 days in a year, or 366 in a leap year."),
    ("Write a short sentence about the rain.", "The rain fell softly on the roof all night."),
]

# ---------------------------------------------------------------------------------------------------
# Skill items: which operands go to training and which are kept back for the held-out set
# ---------------------------------------------------------------------------------------------------

ArithItem = tuple[str, int, int]
ConvItem = tuple[int, int]
WordItem = tuple[str, str]
SortItem = tuple[int, ...]
N_ARITHMETIC, N_CONVERSION_ITEMS, N_WORD, N_SORT = 620, 95, 460, 260
HELDOUT_ARITHMETIC = {"plus": 4, "minus": 3, "times": 3}
HELDOUT_CONVERSION, HELDOUT_WORD_PER_TASK, HELDOUT_SORT = 6, 2, 6
CONVERSIONS_PER_ITEM = 3


def _reserve(
    rng: random.Random, pool: Sequence[T], n: int, key: Callable[[T], Hashable], eligible: Callable[[T], bool]
) -> tuple[list[T], list[T]]:
    """Keep back n eligible items with distinct keys; the rest (no shared key) stay for training."""
    shuffled = list(pool)
    rng.shuffle(shuffled)
    held: list[T] = []
    keys: set[Hashable] = set()
    for item in shuffled:
        if len(held) < n and eligible(item) and key(item) not in keys:
            held.append(item)
            keys.add(key(item))
    return [item for item in shuffled if key(item) not in keys], held


def _arith_key(item: ArithItem) -> tuple[str, int, int]:
    """The same key for a+b and b+a (and a*b, b*a): reversed operands are not new operands."""
    op, a, b = item
    return (op, min(a, b), max(a, b)) if op != "minus" else item


def _arithmetic_items(rng: random.Random) -> tuple[list[ArithItem], list[ArithItem]]:
    """(training, held-out) arithmetic items; held-out ones use operands 2..20 that training never sees."""
    train: list[ArithItem] = []
    held: list[ArithItem] = []
    numbers = range(MAX_NUMBER + 1)
    for op, n_held in HELDOUT_ARITHMETIC.items():
        pool = [(op, a, b) for a in numbers for b in numbers if op != "minus" or a >= b]
        kept, reserved = _reserve(rng, pool, n_held, _arith_key, lambda it: min(it[1], it[2]) >= 2)
        train += kept
        held += reserved
    rng.shuffle(train)
    return train[:N_ARITHMETIC], held


def _conversion_items(rng: random.Random) -> tuple[list[ConvItem], list[ConvItem]]:
    """(training, held-out) conversion items (unit index, value)."""
    pool = [(u, v) for u in range(len(UNITS)) for v in range(1, MAX_NUMBER + 1)]
    train, held = _reserve(rng, pool, HELDOUT_CONVERSION, lambda it: it, lambda it: it[1] >= 2)
    return train[:N_CONVERSION_ITEMS], held


def _word_items(rng: random.Random) -> tuple[list[WordItem], list[WordItem]]:
    """(training, held-out) word-task items (task, word); held-out words are all different."""
    train: list[WordItem] = []
    held: list[WordItem] = []
    for task in WORD_TASKS:
        used = {w for _, w in held}
        kept, reserved = _reserve(
            rng,
            [(task, w) for w in WORDS],
            HELDOUT_WORD_PER_TASK,
            lambda it: it,
            lambda it, used=used: it[1] not in used,
        )
        train += kept
        held += reserved
    rng.shuffle(train)
    return train[:N_WORD], held


def _sort_items(rng: random.Random) -> tuple[list[SortItem], list[SortItem]]:
    """(training, held-out) lists to sort; no two share the same set of numbers."""
    seen: set[SortItem] = set()
    items: list[SortItem] = []
    while len(items) < HELDOUT_SORT + N_SORT:
        numbers = _pick_numbers(rng)
        if tuple(sorted(numbers)) not in seen:
            seen.add(tuple(sorted(numbers)))
            items.append(numbers)
    return items[HELDOUT_SORT:], items[:HELDOUT_SORT]


@dataclass(frozen=True)
class _Skills:
    """(training, held-out) items of each skill category."""

    arithmetic: tuple[list[ArithItem], list[ArithItem]]
    conversion: tuple[list[ConvItem], list[ConvItem]]
    word: tuple[list[WordItem], list[WordItem]]
    sort: tuple[list[SortItem], list[SortItem]]


def _skill_items(seed: int) -> _Skills:
    """Training and held-out items for every skill category, the same for SFT and held-out data."""
    rng = random.Random(f"pocket-skills-{seed}")
    return _Skills(_arithmetic_items(rng), _conversion_items(rng), _word_items(rng), _sort_items(rng))


# ---------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------


def _record(template: Template, output: str, category: str, **fields: object) -> Record:
    """An Alpaca record from an (instruction, input) template."""
    instruction, input_ = (part.format(**fields) for part in template)
    return {"instruction": instruction, "input": input_, "output": output, "category": category}


def capital_record(template: Template, country: str, capital: str) -> Record:
    """A capital question about `country` asked with `template`."""
    return _record(template, capital_fact(country, capital), "capital", c=country_phrase(country), n=country)


def arithmetic_record(template: Template, item: ArithItem) -> Record:
    """An arithmetic question."""
    op, a, b = item
    return _record(template, arithmetic_fact(op, a, b), "arithmetic", a=a, b=b)


def conversion_record(template: Template, item: ConvItem) -> Record:
    """A unit-conversion question."""
    source, target_units, _, _ = conversion_parts(*item)
    return _record(template, conversion_fact(*item), "conversion", s=source, u=target_units)


def word_record(template: Template, item: WordItem) -> Record:
    """A word task."""
    task, word = item
    return _record(template, word_fact(task, word), "word", w=word)


def sort_record(template: Template, item: SortItem) -> Record:
    """A sorting task."""
    return _record(template, sort_fact(item), "sort", l=", ".join(str(n) for n in item))


def _capital_records(rng: random.Random) -> list[Record]:
    """Several phrasings of the capital question for every SFT country."""
    records: list[Record] = []
    for country, capital in SFT_COUNTRIES:
        for template in rng.sample(CAPITAL_TEMPLATES, CAPITALS_PER_COUNTRY):
            records.append(capital_record(template, country, capital))
    return records


def _skill_records(rng: random.Random, skills: _Skills) -> list[Record]:
    """Training records for the arithmetic, conversion, word and sort skills."""
    records = [arithmetic_record(rng.choice(ARITHMETIC_TEMPLATES[it[0]]), it) for it in skills.arithmetic[0]]
    for item in skills.conversion[0]:
        records += [conversion_record(t, item) for t in rng.sample(CONVERSION_TEMPLATES, CONVERSIONS_PER_ITEM)]
    records += [word_record(rng.choice(WORD_TEMPLATES[it[0]]), it) for it in skills.word[0]]
    records += [sort_record(rng.choice(SORT_TEMPLATES), it) for it in skills.sort[0]]
    return records


def _general_records(pairs: Sequence[tuple[str, str]]) -> list[Record]:
    """Records for hand-written general instructions."""
    return [{"instruction": q, "input": "", "output": a, "category": "general"} for q, a in pairs]


def _dedupe(records: Sequence[Record]) -> list[Record]:
    """The records without repeated (instruction, input) pairs, first one kept."""
    seen: set[tuple[str, str]] = set()
    unique: list[Record] = []
    for record in records:
        key = (record["instruction"], record["input"])
        if key not in seen:
            seen.add(key)
            unique.append(record)
    return unique


def make_sft_records(seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-schema SFT records: capitals of SFT countries, skills and general instructions, shuffled."""
    rng = random.Random(f"pocket-sft-{seed}")
    records = _capital_records(rng) + _skill_records(rng, _skill_items(seed)) + _general_records(GENERAL_TRAIN)
    records = _dedupe(records)
    rng.shuffle(records)
    return records


def _heldout(record: Record, answer: str | None, kind: str) -> HeldoutRecord:
    """A held-out record: an Alpaca record plus its short answer and kind."""
    return {**record, "answer": answer, "kind": kind}


def _seed_record() -> HeldoutRecord:
    """The prompt the lab follows from start to end."""
    record = capital_record((SEED_PROMPT, ""), "France", "Paris")
    return _heldout(record, "Paris", "seen_fact")


def _heldout_capitals(rng: random.Random) -> list[HeldoutRecord]:
    """~25 seen facts in new phrasings and ~25 unseen facts in any phrasing."""
    seen = rng.sample([c for c in SFT_COUNTRIES if c[0] != "France"], 24)
    peru = next(c for c in PRETRAIN_ONLY_COUNTRIES if c[0] == "Peru")
    unseen = [peru] + rng.sample([c for c in PRETRAIN_ONLY_COUNTRIES if c != peru], 24)
    records = [_heldout(capital_record(rng.choice(HELDOUT_CAPITAL_TEMPLATES), *c), c[1], "seen_fact") for c in seen]
    any_template = CAPITAL_TEMPLATES + HELDOUT_CAPITAL_TEMPLATES
    records += [_heldout(capital_record(rng.choice(any_template), *c), c[1], "unseen_fact") for c in unseen]
    return records


def _heldout_skills(rng: random.Random, skills: _Skills) -> list[HeldoutRecord]:
    """Skill questions whose operands training never uses."""
    records = [
        _heldout(arithmetic_record(rng.choice(ARITHMETIC_TEMPLATES[it[0]]), it), str(compute(*it)), "skill")
        for it in skills.arithmetic[1]
    ]
    records += [
        _heldout(conversion_record(rng.choice(CONVERSION_TEMPLATES), it), str(conversion_parts(*it)[3]), "skill")
        for it in skills.conversion[1]
    ]
    records += [
        _heldout(word_record(rng.choice(WORD_TEMPLATES[it[0]]), it), word_answer(*it), "skill") for it in skills.word[1]
    ]
    records += [
        _heldout(sort_record(rng.choice(SORT_TEMPLATES), it), sort_answer(it), "skill") for it in skills.sort[1]
    ]
    return records


def make_heldout(seed: int = 0) -> list[dict[str, str | None]]:
    """Held-out prompts with reference answers; the first is the lab's seed prompt."""
    rng = random.Random(f"pocket-heldout-{seed}")
    general = [_heldout(r, None, "general") for r in _general_records(GENERAL_HELDOUT)]
    return [_seed_record()] + _heldout_capitals(rng) + _heldout_skills(rng, _skill_items(seed)) + general


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def to_jsonl(records: Sequence[dict[str, str | None]]) -> str:
    """JSON Lines text, one record a line, UTF-8 characters kept as they are."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_dataset(out_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """Write train.jsonl and heldout.jsonl into out_dir; return how many records each holds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = make_sft_records(seed), make_heldout(seed)
    atomic_write_text(out / "train.jsonl", to_jsonl(train))
    atomic_write_text(out / "heldout.jsonl", to_jsonl(heldout))
    return {"train": len(train), "heldout": len(heldout)}


def main(argv: list[str] | None = None) -> int:
    """Command line: write the pocket Alpaca dataset."""
    parser = argparse.ArgumentParser(description="Generate the synthetic pocket Alpaca dataset.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    counts = write_dataset(args.out, args.seed)
    print(f"wrote {counts['train']} training and {counts['heldout']} held-out records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
