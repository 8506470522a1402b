"""Template grammar of voice-assistant requests, the text side of the synthetic corpus.

Owns the word lists and templates of every request domain (smart-home control, calls and messages,
timers and alarms, music, weather, shopping lists, calendar and reminders, dialling digits, small
talk, Speech Commands words as short commands and as isolated words), the sampler
:func:`sample_request` and :func:`grammar_vocabulary`. Outside personal names, the templates use
only the words of the measured request vocabulary (``shared/data/requests/vocabulary.txt``,
316 words), and cover all of them; the lists are written here so the grammar works without the
shared folder.

Text is lower case words separated by single spaces, apostrophes kept inside words.
Isolated single words (Speech Commands words, digits) make about 25% of the requests, because the
model is tested on isolated FSDD digits and Speech Commands clips; they never carry the wake word.

:func:`sample_free_sentence` writes what the templates never do, from the same words: random word
strings, requests with words shuffled, dropped or inserted, names and numbers at any position,
and paraphrases in other word orders. Mixed into the training text, they keep the predictor
from learning the templates as a language model (reciting a template's continuation over what
was said).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from train.corpus import names as name_pool

WAKE_WORD = "computer"

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = ("twenty", "thirty", "forty", "fifty")
SPEECH_COMMANDS = tuple(
    """yes no up down left right on off stop go backward forward follow learn visual wow bed bird
    cat dog happy house marvin sheila tree""".split()
)
"""The 25 Speech Commands v0.02 words besides the digits."""

ROOMS = (
    "kitchen",
    "bedroom",
    "bathroom",
    "living room",
    "dining room",
    "basement",
    "attic",
    "garage",
    "hallway",
    "office",
    "nursery",
    "porch",
    "kids room",
)
SWITCHABLE = (
    "light",
    "lights",
    "lamp",
    "table lamp",
    "fan",
    "heater",
    "plug",
    "tv",
    "television",
    "speaker",
    "camera",
    "coffee maker",
    "dishwasher",
    "washing machine",
    "air conditioner",
    "vacuum",
    "oven",
    "tree lights",
    "music",
)
OPENABLE = ("blinds", "curtains")
LOCKABLE = ("door", "garage door", "car", "house")
CONTACT_WORDS = ("mom", "dad", "grandma", "grandpa")
GENRES = (
    "blues",
    "classical",
    "country",
    "dance",
    "electronic",
    "folk",
    "hip hop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
    "soul",
    "piano",
    "relaxing",
    "yoga",
)
CITIES = (
    "atlanta",
    "austin",
    "berlin",
    "boston",
    "chicago",
    "dallas",
    "denver",
    "dublin",
    "london",
    "los angeles",
    "madrid",
    "miami",
    "new york",
    "paris",
    "phoenix",
    "portland",
    "rome",
    "san francisco",
    "seattle",
    "sydney",
    "tokyo",
    "toronto",
)
GROCERIES = (
    "apples",
    "bananas",
    "batteries",
    "bread",
    "butter",
    "carrots",
    "cereal",
    "cheese",
    "chicken",
    "coffee",
    "cream",
    "eggs",
    "flour",
    "grapes",
    "ice cream",
    "juice",
    "orange juice",
    "lettuce",
    "milk",
    "olive oil",
    "onions",
    "pasta",
    "peanut butter",
    "potatoes",
    "rice",
    "salt",
    "dish soap",
    "soap",
    "sugar",
    "tea",
    "tomatoes",
    "paper towels",
    "towels",
    "water",
    "yogurt",
)
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WHEN = ("today", "tomorrow", "tonight", "this weekend", "next week", "this week", "tomorrow night")
TASKS = (
    "take out the trash",
    "pay the bills",
    "feed the dog",
    "feed the cat",
    "feed the bird",
    "walk the dog",
    "water the plants",
    "pick up the kids",
    "check the mail",
    "call the dentist",
    "call the doctor",
    "buy a gift",
    "book a haircut",
    "buy some milk",
    "lock the door",
    "send the message",
    "go to bed",
)
EVENTS = (
    "meeting",
    "team meeting",
    "dentist appointment",
    "doctor appointment",
    "appointment",
    "haircut",
    "yoga class",
    "class",
    "birthday party",
    "party",
    "parent meeting",
    "lunch",
    "car service",
    "piano class",
    "dance class",
)


@dataclass(frozen=True)
class Request:
    """One sampled request.

    Attributes:
        text: the words spoken, lower case, single spaces (starts with "computer " if wake_word).
        context: 1..5 personal names for biasing: those spoken plus distractors from the same pool.
        domain: which template family produced it (a key of :data:`DOMAIN_WEIGHTS`).
        wake_word: whether the text starts with the wake word.
    """

    text: str
    context: list[str]
    domain: str
    wake_word: bool


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _number(rng: np.random.Generator, lo: int, hi: int) -> str:
    """A number word for a value in [lo, hi] (hi <= 59)."""
    return number_words(int(rng.integers(lo, hi + 1)))


def number_words(n: int) -> str:
    """Spell 0..59 in words: 7 -> "seven", 42 -> "forty two"."""
    if not 0 <= n <= 59:
        raise ValueError(f"n: expected 0..59, got {n}")
    if n < 10:
        return DIGITS[n]
    if n < 20:
        return TEENS[n - 10]
    tens, unit = divmod(n, 10)
    return TENS[tens - 2] + ("" if unit == 0 else " " + DIGITS[unit])


def _clock(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.06:
        return _pick(rng, ("noon", "midnight"))
    hour = number_words(int(rng.integers(1, 13)))
    r = rng.random()
    if r < 0.3:
        core = hour
    elif r < 0.5:
        core = hour + " o'clock"
    else:
        core = (
            hour + " " + _pick(rng, ("fifteen", "thirty", "forty five", "ten", "twenty", "fifty"))
        )
    if not core.endswith("o'clock") and rng.random() < 0.4:
        core += " " + _pick(rng, ("a m", "p m"))
    return core


def _duration(rng: np.random.Generator) -> str:
    unit = _pick(rng, ("minutes", "minutes", "seconds", "hours"))
    hi = 12 if unit == "hours" else 59
    return _number(rng, 2, hi) + " " + unit


class _Names:
    """Draws spoken names and builds the biasing context for one request."""

    def __init__(self, rng: np.random.Generator, names: Sequence[str], wide_share: float = 0.0):
        self.rng = rng
        self.persons = [n for n in names if not name_pool.is_device_name(n)]
        self.devices = [n for n in names if name_pool.is_device_name(n)]
        self.spoken: list[str] = []
        self.wide_share = wide_share

    def person(self) -> str:
        if not self.persons:
            return _pick(self.rng, CONTACT_WORDS)
        # No draw at all when the share is 0: requests without wide names stay as they were.
        if self.wide_share > 0 and self.rng.random() < self.wide_share:
            first, last = name_pool.wide_names()
            if self.rng.random() < 0.6:
                name = _pick(self.rng, first)
                if self.rng.random() < 0.25:
                    name = name + " " + _pick(self.rng, last)
            else:
                name = _pick(self.rng, last)
            self.spoken.append(name)
            return name
        vocab = [n for n in self.persons if n in name_pool.VOCAB_NAMES]
        # Names that are vocabulary words are spoken more often: they are measured words too.
        name = _pick(self.rng, vocab if vocab and self.rng.random() < 0.4 else self.persons)
        if name in name_pool.FIRST_NAMES and self.rng.random() < 0.25:
            surnames = [n for n in self.persons if n in name_pool.SURNAMES]
            if surnames:
                name = name + " " + _pick(self.rng, surnames)
        self.spoken.append(name)
        return name

    def device(self) -> str | None:
        if not self.devices:
            return None
        if self.wide_share > 0 and self.rng.random() < self.wide_share:
            name = _pick(self.rng, name_pool.wide_names()[0])  # any word can name a device
        else:
            name = _pick(self.rng, self.devices)
        self.spoken.append(name)
        return name

    def context(self) -> list[str]:
        pool = self.persons + self.devices
        spoken = list(dict.fromkeys(self.spoken))[:5]
        if not pool:
            return spoken
        size = max(len(spoken), int(self.rng.integers(1, 6)))
        out = list(spoken)
        tries = 0
        while len(out) < size and tries < 50:
            cand = _pick(self.rng, pool)
            tries += 1
            if cand not in out and all(cand not in s.split() for s in out):
                out.append(cand)
        order = self.rng.permutation(len(out))
        return [out[i] for i in order]


def _smart_home(rng: np.random.Generator, nm: _Names) -> str:
    r = rng.random()
    room = _pick(rng, ROOMS)
    thing = _pick(rng, SWITCHABLE)
    the_room = ("the " + room + " " + thing) if rng.random() < 0.6 else ("the " + thing)
    if r < 0.3:
        verb = _pick(rng, ("turn", "switch"))
        state = _pick(rng, ("on", "off"))
        if rng.random() < 0.5:
            return f"{verb} {state} {the_room}"
        return f"{verb} {the_room} {state}"
    if r < 0.38:
        dev = nm.device()
        if dev is None:
            return f"turn on the {room} lights"
        return _pick(rng, (f"turn on {dev}", f"turn off {dev}", f"switch off the {dev}"))
    if r < 0.48:
        pct = _number(rng, 10, 50) if rng.random() < 0.8 else "one"
        return _pick(
            rng,
            (
                f"dim the {room} lights to {pct} percent",
                f"dim the lights to {pct} percent",
                f"set the {room} lamp to {pct} percent",
                "dim the lights",
            ),
        )
    if r < 0.62:
        deg = _number(rng, 16, 28)
        return _pick(
            rng,
            (
                f"set the thermostat to {deg} degrees",
                f"set the {room} thermostat to {deg} degrees",
                f"set the heater to {deg} degrees",
                f"turn the thermostat up to {deg} degrees",
                "turn the thermostat down",
                "turn up the heater",
                "turn down the air conditioner",
                "what is the thermostat set to",
            ),
        )
    if r < 0.72:
        cover = _pick(rng, OPENABLE)
        return _pick(
            rng,
            (
                f"turn down the {room} {cover}",
                f"{cover} up",
                f"turn the {room} {cover} down",
                f"set the {cover} to {_number(rng, 10, 50)} percent",
            ),
        )
    if r < 0.8:
        lk = _pick(rng, LOCKABLE)
        return _pick(rng, (f"lock the {lk}", f"is the {lk} lock on", f"check the {lk} lock"))
    if r < 0.88:
        return _pick(
            rng,
            (
                f"turn on the {_pick(rng, ('dishwasher', 'washing machine', 'vacuum', 'oven'))}",
                "vacuum the living room",
                "turn off the oven",
                f"switch the {thing} off in the {room}",
            ),
        )
    if r < 0.94:
        return f"turn {_pick(rng, ('on', 'off'))} the {_pick(rng, ('fan', 'plug', 'camera'))} in the {room}"
    return _pick(
        rng,
        (
            "turn off the house lights",
            "turn on the tree lights",
            "switch off the tv",
            "turn on the porch light",
        ),
    )


def _calls(rng: np.random.Generator, nm: _Names) -> str:
    who = nm.person() if rng.random() < 0.8 else _pick(rng, CONTACT_WORDS)
    r = rng.random()
    if r < 0.35:
        return _pick(rng, (f"call {who}", f"call {who} mobile", f"call {who} on mobile"))
    if r < 0.55:
        return f"text {who} {_pick(rng, MESSAGES)}"
    if r < 0.75:
        return _pick(
            rng,
            (
                f"send a message to {who}",
                f"send {who} a message",
                f"send a text to {who}",
                f"message {who} {_pick(rng, MESSAGES)}",
            ),
        )
    if r < 0.85:
        return f"dial {who}"
    return _pick(
        rng, (f"call {who} at the office", f"text {who} that i need {_pick(rng, GROCERIES)}")
    )


MESSAGES = (
    "i will call at seven",
    "i need some milk",
    "good morning",
    "good night",
    "happy birthday",
    "call me tonight",
    "pick up the kids",
    "call me",
    "lunch at noon",
    "i need a haircut",
    "take out the trash",
    "the meeting is at three",
    "i will call",
    "what time is it",
)


def _timers(rng: np.random.Generator, nm: _Names) -> str:
    r = rng.random()
    if r < 0.3:
        return _pick(
            rng,
            (
                f"set a timer for {_duration(rng)}",
                f"set a {_duration(rng)} timer",
                f"timer {_duration(rng)}",
                f"set the {_pick(rng, ('pasta', 'rice', 'chicken', 'tea', 'oven'))} timer for {_duration(rng)}",
            ),
        )
    if r < 0.55:
        day = _pick(rng, DAYS + ("tomorrow", "today", "saturday")) if rng.random() < 0.3 else ""
        tail = f" {'on ' + day if day in DAYS else day}" if day else ""
        return _pick(
            rng,
            (
                f"set an alarm for {_clock(rng)}{tail}",
                f"wake me up at {_clock(rng)}{tail}",
                f"set a morning alarm for {_clock(rng)}",
                f"alarm at {_clock(rng)}",
            ),
        )
    if r < 0.8:
        return _pick(
            rng,
            (
                "cancel the timer",
                "cancel my alarm",
                "cancel the alarm",
                f"cancel the {_clock(rng)} alarm",
                "stop the timer",
                "stop the alarm",
                "how much time is on the timer",
                "how much time is on my timer",
                "remove the alarm",
            ),
        )
    return _pick(
        rng,
        (
            "what time is it",
            "what's the time",
            f"what time is it in {_pick(rng, CITIES)}",
            f"what's the time in {_pick(rng, CITIES)}",
        ),
    )


def _music(rng: np.random.Generator, nm: _Names) -> str:
    genre = _pick(rng, GENRES)
    r = rng.random()
    if r < 0.35:
        where = f" in the {_pick(rng, ROOMS)}" if rng.random() < 0.3 else ""
        return _pick(
            rng,
            (
                f"play some {genre} music{where}",
                f"play {genre} music{where}",
                f"play {genre}{where}",
                f"play some {genre}",
                f"play {genre} music on the {_pick(rng, ROOMS)} speaker",
            ),
        )
    if r < 0.6:
        return _pick(
            rng,
            (
                "pause",
                "pause the music",
                "play",
                "play music",
                "next",
                "next song",
                "play the next song",
                "repeat",
                "repeat this song",
                "repeat that song",
                "stop the music",
                "play that song",
            ),
        )
    if r < 0.85:
        return _pick(
            rng,
            (
                "volume up",
                "volume down",
                "turn the volume up",
                "turn the volume down",
                "turn up the volume",
                f"set the volume to {_number(rng, 1, 10)}",
                f"set volume to {_number(rng, 10, 50)} percent",
            ),
        )
    return _pick(
        rng,
        (
            f"play some {genre} for a party",
            f"play a {genre} song",
            "play music for my yoga class",
            "play relaxing piano music",
            "play a song for the kids",
            "play dance music in the kids room",
        ),
    )


def _weather(rng: np.random.Generator, nm: _Names) -> str:
    city = _pick(rng, CITIES)
    when = _pick(rng, WHEN + DAYS)
    when = "on " + when if when in DAYS else when
    return _pick(
        rng,
        (
            f"what's the weather in {city}",
            f"what's the weather {when}",
            f"what's the weather in {city} {when}",
            "what's the weather",
            f"will it rain {when}",
            f"will it rain in {city} {when}",
            "will it rain",
            f"do i need an umbrella {when}",
            "do i need an umbrella",
            f"how much rain in {city} {when}",
            f"weather in {city}",
            f"what's the weather for the weekend in {city}",
        ),
    )


def _shopping(rng: np.random.Generator, nm: _Names) -> str:
    item = _pick(rng, GROCERIES)
    lst = _pick(rng, ("my shopping list", "the shopping list", "shopping list", "my list"))
    return _pick(
        rng,
        (
            f"add {item} to {lst}",
            f"add {item} to {lst}",
            f"add {item}",
            f"remove {item} from {lst}",
            f"buy {item}",
            f"i need {item}",
            f"i need to buy {item}",
            "what's on my shopping list",
            "check my shopping list",
            f"add {_number(rng, 2, 12)} {item} to {lst}",
        ),
    )


def _calendar(rng: np.random.Generator, nm: _Names) -> str:
    when = _pick(rng, WHEN + DAYS)
    on_when = "on " + when if when in DAYS else when
    event = _pick(rng, EVENTS)
    r = rng.random()
    if r < 0.35:
        at = f" at {_clock(rng)}" if rng.random() < 0.6 else ""
        return _pick(
            rng,
            (
                f"remind me to {_pick(rng, TASKS)} {on_when}{at}",
                f"remind me to {_pick(rng, TASKS)}{at}",
                f"remind me to {_pick(rng, TASKS)} in {_duration(rng)}",
                f"remind me {on_when} to {_pick(rng, TASKS)}",
            ),
        )
    if r < 0.65:
        with_who = f" with {nm.person()}" if rng.random() < 0.3 else ""
        return _pick(
            rng,
            (
                f"add a {event}{with_who} to my calendar {on_when}",
                f"add {event} to my calendar for {when}",
                f"book a {event}{with_who} {on_when} at {_clock(rng)}",
                f"set a {event}{with_who} for {when} at {_clock(rng)}",
                f"cancel my {event} {on_when}",
                f"remove the {event} from my calendar",
            ),
        )
    return _pick(
        rng,
        (
            f"what's on my calendar {on_when}",
            "what's on my calendar",
            f"check my calendar for {when}",
            f"what time is the {event}",
            f"what time is my {event}",
            f"what time is my {event} {on_when}",
            f"is my {event} {on_when}",
            f"what is on my calendar {on_when}",
        ),
    )


def _dialling(rng: np.random.Generator, nm: _Names) -> str:
    n = int(rng.integers(3, 11))
    digits = " ".join(_pick(rng, DIGITS) for _ in range(n))
    return _pick(
        rng,
        (
            f"dial {digits}",
            f"call {digits}",
            f"dial plus one {digits}",
            f"dial plus {_pick(rng, DIGITS)} {digits}",
            digits,
            f"text {digits}",
            f"call {digits} on mobile",
        ),
    )


def _small_talk(rng: np.random.Generator, nm: _Names) -> str:
    return _pick(
        rng,
        (
            "tell me a joke",
            "tell me a good joke",
            "tell the kids a joke",
            "tell me a dog joke",
            "tell me a cat joke",
            "good morning",
            "good night",
            "good night computer",
            "how is the weather",
            "how much is it",
            "what is this",
            "what's that",
            "what's this song",
            "what is that song",
            "happy birthday",
            "play happy birthday",
            "wow",
            "i need a joke",
            "what's good",
            "how is my week",
            f"what is {_number(rng, 1, 20)} plus {_number(rng, 1, 20)}",
        ),
    )


def _short_command(rng: np.random.Generator, nm: _Names) -> str:
    return _pick(
        rng,
        (
            "go",
            "go left",
            "go right",
            "go up",
            "go down",
            "go forward",
            "go backward",
            "turn left",
            "turn right",
            "follow me",
            "stop",
            "yes",
            "no",
            "turn on",
            "turn off",
            "learn",
            "go to bed",
            "go to the house",
            "follow the dog",
            "follow the cat",
            "visual",
            "wow",
            "happy",
            "on",
            "off",
            "yes go",
            "no stop",
            "up up",
            "down",
            "left",
            "right",
            "marvin",
            "sheila",
            f"go forward {_pick(rng, DIGITS[1:])}",
            f"go backward {_pick(rng, DIGITS[1:])}",
            f"turn left {_pick(rng, DIGITS[1:])}",
        ),
    )


def _isolated_word(rng: np.random.Generator, nm: _Names) -> str:
    return _pick(rng, SPEECH_COMMANDS)


def _isolated_digit(rng: np.random.Generator, nm: _Names) -> str:
    return _pick(rng, DIGITS)


DOMAINS: dict[str, Callable[[np.random.Generator, _Names], str]] = {
    "smart_home": _smart_home,
    "calls": _calls,
    "timers": _timers,
    "music": _music,
    "weather": _weather,
    "shopping": _shopping,
    "calendar": _calendar,
    "dialling": _dialling,
    "small_talk": _small_talk,
    "short_command": _short_command,
    "isolated_word": _isolated_word,
    "isolated_digit": _isolated_digit,
}

DOMAIN_WEIGHTS: dict[str, float] = {
    "smart_home": 0.17,
    "calls": 0.08,
    "timers": 0.08,
    "music": 0.08,
    "weather": 0.06,
    "shopping": 0.06,
    "calendar": 0.08,
    "dialling": 0.05,
    "small_talk": 0.04,
    "short_command": 0.05,
    "isolated_word": 0.15,
    "isolated_digit": 0.10,
}
"""Share of each domain; isolated words and digits together make 25%."""

ISOLATED_DOMAINS = frozenset({"isolated_word", "isolated_digit"})
_DOMAIN_KEYS = tuple(DOMAINS)
_DOMAIN_P = np.array([DOMAIN_WEIGHTS[k] for k in _DOMAIN_KEYS]) / sum(DOMAIN_WEIGHTS.values())


def sample_request(
    rng: np.random.Generator,
    names: Sequence[str] = name_pool.TRAIN_NAMES,
    wake_word_prob: float = 0.3,
    wide_names: float = 0.0,
) -> Request:
    """Sample one voice-assistant request.

    Args:
        rng: randomness source (the only one used).
        names: the name pool that spoken names and context distractors come from
            (``names.TRAIN_NAMES`` or ``names.HELDOUT_NAMES``); device nicknames in it are spoken
            as devices, the others as contacts.
        wake_word_prob: probability that the request starts with "computer " (never for isolated
            words and digits).
        wide_names: share of spoken contact and device names drawn from
            :func:`names.wide_names` (22,133 given names and surnames, none held out)
            instead of ``names``; use it for training requests only. 0 draws nothing extra
            from ``rng``.

    Returns:
        A :class:`Request`.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected np.random.Generator, got {type(rng).__name__}")
    if not 0.0 <= wake_word_prob <= 1.0:
        raise ValueError(f"wake_word_prob: expected in [0, 1], got {wake_word_prob}")
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"names: expected a sequence of non-empty strings, got {names!r:.80}")
    if not 0.0 <= wide_names <= 1.0:
        raise ValueError(f"wide_names: expected in [0, 1], got {wide_names}")
    domain = _DOMAIN_KEYS[int(rng.choice(len(_DOMAIN_KEYS), p=_DOMAIN_P))]
    nm = _Names(rng, list(names), float(wide_names))
    text = DOMAINS[domain](rng, nm)
    wake = domain not in ISOLATED_DOMAINS and bool(rng.random() < wake_word_prob)
    if wake:
        text = WAKE_WORD + " " + text
    text = " ".join(text.split())
    return Request(text=text, context=nm.context(), domain=domain, wake_word=wake)


def grammar_vocabulary(names: Sequence[str] = name_pool.TRAIN_NAMES) -> set[str]:
    """Every word the grammar can generate with the name pool ``names``.

    Found by exhaustive enumeration of the templates: each template function is run with a
    recording random source over many seeds, which reaches every branch; the word lists are
    added directly so that no list entry is missed.
    """
    words: set[str] = {WAKE_WORD}
    lists = (
        DIGITS,
        TEENS,
        TENS,
        SPEECH_COMMANDS,
        ROOMS,
        SWITCHABLE,
        OPENABLE,
        LOCKABLE,
        CONTACT_WORDS,
        GENRES,
        CITIES,
        GROCERIES,
        DAYS,
        WHEN,
        TASKS,
        EVENTS,
        MESSAGES,
        ("noon", "midnight", "o'clock", "a m", "p m", "minutes", "seconds", "hours"),
    )
    for items in lists:
        for item in items:
            words.update(item.split())
    rng = np.random.default_rng(0)
    nm = _Names(rng, list(names))
    for fn in DOMAINS.values():
        for _ in range(3000):
            words.update(fn(rng, nm).split())
    for n in names:
        words.update(n.split())
    return words


FREE_KINDS: dict[str, float] = {
    "random_words": 0.3,  # 1-8 words drawn uniformly from the grammar's vocabulary
    "edited_request": 0.3,  # a request with words shuffled, dropped, repeated or inserted
    "names_numbers": 0.15,  # words, names and numbers in any order
    "paraphrase": 0.25,  # a request in a word order the templates do not use
}
"""Share of each kind of :func:`sample_free_sentence` sentence."""

_FREE_KEYS = tuple(FREE_KINDS)
_FREE_P = np.array([FREE_KINDS[k] for k in _FREE_KEYS]) / sum(FREE_KINDS.values())


@functools.cache
def _plain_words() -> tuple[str, ...]:
    """The grammar's words without personal names, sorted (the free sentences' word list)."""
    return tuple(sorted(grammar_vocabulary(names=())))


def _free_number(rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.4:
        return _number(rng, 0, 59)
    if r < 0.7:
        return " ".join(_pick(rng, DIGITS) for _ in range(int(rng.integers(2, 6))))
    return _clock(rng)


def _free_name(rng: np.random.Generator, nm: _Names) -> str:
    dev = nm.device() if rng.random() < 0.25 else None
    return dev if dev is not None else nm.person()


def _paraphrase(rng: np.random.Generator, nm: _Names) -> str:
    """Requests of the template domains in word orders the templates do not use."""
    room, thing = _pick(rng, ROOMS), _pick(rng, SWITCHABLE)
    state = _pick(rng, ("on", "off"))
    when = _pick(rng, WHEN + DAYS)
    item, city, genre = _pick(rng, GROCERIES), _pick(rng, CITIES), _pick(rng, GENRES)
    event, task = _pick(rng, EVENTS), _pick(rng, TASKS)
    forms = (
        lambda: f"{room} {thing} {state}",
        lambda: f"{thing} {state} in the {room}",
        lambda: f"i need the {thing} {state}",
        lambda: f"the {thing} {state} {when}",
        lambda: f"{state} the {room} {thing}",
        lambda: f"dim the {room} lights to {_number(rng, 1, 59)} percent",
        lambda: f"thermostat to {_number(rng, 15, 30)} degrees in the {room}",
        lambda: f"some {genre} in the {room}",
        lambda: f"{genre} music {state}",
        lambda: f"i need some {genre}",
        lambda: f"volume {_pick(rng, ('up', 'down'))} on the {room} speaker",
        lambda: f"{city} weather {when}",
        lambda: f"rain in {city} {when}",
        lambda: f"is it rain {when} in {city}",
        lambda: f"{item} to the list",
        lambda: f"{item} {_pick(rng, GROCERIES)} {_pick(rng, GROCERIES)}",
        lambda: f"{_number(rng, 2, 12)} {item} for the shopping list",
        lambda: f"{_duration(rng)} timer",
        lambda: f"timer for {_duration(rng)}",
        lambda: f"alarm at {_clock(rng)} {when}",
        lambda: f"wake me up at {_clock(rng)}",
        lambda: f"{when} at {_clock(rng)} {event}",
        lambda: f"my {event} is {when}",
        lambda: f"{task} {when} remind me",
        lambda: f"{nm.person()} call",
        lambda: f"a message to {nm.person()}",
        lambda: f"text {nm.person()} good morning",
        lambda: f"is {nm.person()} on my calendar {when}",
    )
    return forms[int(rng.integers(len(forms)))]()


def sample_free_sentence(
    rng: np.random.Generator,
    names: Sequence[str] = name_pool.TRAIN_NAMES,
    wake_word_prob: float = 0.3,
    wide_names: float = 0.0,
) -> Request:
    """Sample one sentence outside the templates, from the grammar's words (:data:`FREE_KINDS`).

    Args: as :func:`sample_request` (the spoken names come from ``names``, or the wide list
        with share ``wide_names``, and are in the biasing context).

    Returns:
        A :class:`Request` with domain ``"free"``; ``wake_word`` tells whether the text starts
        with "computer" (the wake word may also fall anywhere else).
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected np.random.Generator, got {type(rng).__name__}")
    if not 0.0 <= wake_word_prob <= 1.0:
        raise ValueError(f"wake_word_prob: expected in [0, 1], got {wake_word_prob}")
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"names: expected a sequence of non-empty strings, got {names!r:.80}")
    if not 0.0 <= wide_names <= 1.0:
        raise ValueError(f"wide_names: expected in [0, 1], got {wide_names}")
    words = _plain_words()
    nm = _Names(rng, list(names), float(wide_names))
    kind = _FREE_KEYS[int(rng.choice(len(_FREE_KEYS), p=_FREE_P))]
    if kind == "random_words":
        text = " ".join(_pick(rng, words) for _ in range(int(rng.integers(1, 9))))
    elif kind == "edited_request":
        base = sample_request(rng, names, 0.0, wide_names)
        nm.spoken += [n for n in base.context if f" {n} " in f" {base.text} "]
        toks = base.text.split()
        for _ in range(int(rng.integers(1, 4))):
            op = rng.random()
            if op < 0.3 and len(toks) > 1:
                toks = [toks[i] for i in rng.permutation(len(toks))]
            elif op < 0.55 and len(toks) > 1:
                del toks[int(rng.integers(len(toks)))]
            elif op < 0.7:
                k = int(rng.integers(len(toks)))
                toks.insert(k, toks[k])
            else:
                toks.insert(int(rng.integers(len(toks) + 1)), _pick(rng, words))
        text = " ".join(toks)
    elif kind == "names_numbers":
        parts = [_pick(rng, words) for _ in range(int(rng.integers(0, 5)))]
        for _ in range(int(rng.integers(1, 4))):
            extra = _free_name(rng, nm) if rng.random() < 0.5 else _free_number(rng)
            parts.insert(int(rng.integers(len(parts) + 1)), extra)
        text = " ".join(parts)
    else:
        text = _paraphrase(rng, nm)
    if rng.random() < wake_word_prob:
        text = WAKE_WORD + " " + text
    text = " ".join(text.split())
    return Request(
        text=text,
        context=nm.context(),
        domain="free",
        wake_word=text.split()[0] == WAKE_WORD,
    )
