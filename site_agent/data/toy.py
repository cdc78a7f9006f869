"""A small synthetic medical-style QA set with labelled noise: a PLACEHOLDER for demos and tests.

This is not a benchmark and not medical advice. It stands in until the real PyCMeKG-derived benchmark is
wired in; nothing here should be read as a measure of how a strategy does on real data.

Clean pairs are composed from small template and vocabulary lists (question type x condition x patient
age), so every clean pair is unique and a clean answer is a few plain sentences that use typographic
characters (’, –, °, é) the way real exports do. A share ``noise_rate`` of rows is then damaged with
one noise type each, and the label list says which (``"clean"`` otherwise):

- ``html``        tags, entities, a ``<script>`` block around or inside the text
- ``whitespace``  doubled spaces, tabs, no-break spaces, stray line breaks, untrimmed ends
- ``duplicate``   an exact copy of an earlier clean row
- ``truncated``   the answer cut off after a few characters
- ``empty``       an empty or whitespace-only answer
- ``garbled``     UTF-8 read as cp1252 (``â€™`` for ’) or stray control characters
- ``repetition``  the answer runs into a long loop of one phrase, as degenerate generations do

The clean pairs are drawn before any noise, so with the same ``n`` and ``seed``, ``noise_rate=0``
returns the undamaged version of every row (except that a ``duplicate`` row holds a copy of an
earlier pair instead of its own).
"""

from __future__ import annotations

import random

from site_agent.errors import DataError
from site_agent.operators.base import Batch

__all__ = ["NOISE_TYPES", "TOY_MAX_ROWS", "make_toy_dataset"]

NOISE_TYPES = ("html", "whitespace", "duplicate", "truncated", "empty", "garbled", "repetition")

# condition: (three symptoms, first-line treatment, confirming test)
_CONDITIONS: dict[str, tuple[tuple[str, str, str], str, str]] = {
    "type 2 diabetes": (("increased thirst", "frequent urination", "fatigue"),
                        "metformin together with diet and exercise changes", "an HbA1c blood test"),
    "hypertension": (("morning headaches", "dizziness", "blurred vision"),
                     "lifestyle changes and an ACE inhibitor", "a series of blood pressure readings"),
    "asthma": (("wheezing", "shortness of breath", "a night-time cough"),
               "an inhaled corticosteroid with a reliever inhaler", "spirometry"),
    "migraine": (("a throbbing headache", "nausea", "sensitivity to light"),
                 "rest in a dark room and a triptan", "a neurological examination"),
    "iron-deficiency anaemia": (("tiredness", "pale skin", "breathlessness on exertion"),
                                "oral iron supplements", "a full blood count with ferritin"),
    "hypothyroidism": (("weight gain", "cold intolerance", "dry skin"),
                       "daily levothyroxine", "a TSH blood test"),
    "gastro-oesophageal reflux disease": (("heartburn", "regurgitation", "chest discomfort after meals"),
                                          "a proton pump inhibitor", "an upper endoscopy"),
    "urinary tract infection": (("burning on urination", "a frequent urge to urinate", "lower abdominal pain"),
                                "a short course of antibiotics", "a urine culture"),
    "community-acquired pneumonia": (("fever", "a productive cough", "chest pain on breathing"),
                                     "oral antibiotics and rest", "a chest X-ray"),
    "knee osteoarthritis": (("joint pain", "morning stiffness", "reduced range of motion"),
                            "exercise therapy and paracetamol", "a knee X-ray"),
    "atrial fibrillation": (("palpitations", "breathlessness", "light-headedness"),
                            "rate control and anticoagulation", "an electrocardiogram"),
    "chronic kidney disease": (("ankle swelling", "fatigue", "reduced urine output"),
                               "blood pressure control with an ACE inhibitor", "an eGFR blood test"),
    "psoriasis": (("red scaly patches", "itching", "nail pitting"),
                  "topical corticosteroids", "a skin examination"),
    "gout": (("sudden joint pain", "redness", "swelling of the big toe"),
             "an NSAID or colchicine", "a serum urate level"),
    "Ménière’s disease": (("vertigo", "ringing in the ears", "hearing loss"),
                          "a low-salt diet and betahistine", "a hearing test"),
    "Sjögren’s syndrome": (("dry eyes", "a dry mouth", "joint pain"),
                           "artificial tears and saliva substitutes", "an antibody blood test"),
    "depression": (("low mood", "loss of interest", "poor sleep"),
                   "talking therapy and an SSRI", "a structured clinical interview"),
    "generalised anxiety disorder": (("persistent worry", "restlessness", "poor concentration"),
                                     "cognitive behavioural therapy", "a structured clinical interview"),
    "COPD": (("a chronic cough", "sputum production", "breathlessness"),
             "bronchodilator inhalers and pulmonary rehabilitation", "spirometry"),
    "coeliac disease": (("diarrhoea", "bloating", "weight loss"),
                        "a strict gluten-free diet", "a tTG antibody test"),
    "shingles": (("a painful band-shaped rash", "tingling", "fever"),
                 "antiviral tablets started early", "a clinical examination"),
    "heart failure": (("breathlessness", "ankle swelling", "fatigue"),
                      "diuretics and a beta blocker", "an echocardiogram"),
    "osteoporosis": (("back pain", "loss of height", "fractures after minor falls"),
                     "calcium, vitamin D and a bisphosphonate", "a DEXA bone density scan"),
    "peptic ulcer disease": (("burning stomach pain", "bloating", "nausea"),
                             "a proton pump inhibitor with H. pylori eradication", "an H. pylori breath test"),
}
_NAMES = tuple(_CONDITIONS)
_AGES = range(18, 91)
# (instruction, answer) templates; every answer carries a typographic character (’ – °) on purpose.
_TEMPLATES = (
    ("What are the common symptoms of {c} in {a} {age}-year-old patient?",
     "In {a} {age}-year-old patient, {c} commonly causes {s1}, {s2} and {s3}. "
     "A clinician’s assessment is needed to confirm the cause."),
    ("How is {c} usually treated in {a} {age}-year-old adult?",
     "For {a} {age}-year-old adult, first-line care for {c} is usually {t}. "
     "The plan is reviewed after {weeks} weeks – sooner if symptoms worsen."),
    ("Which test helps confirm {c} in a patient aged {age}?",
     "{Test} is commonly used to confirm {c}. At age {age}, the result is read together with the "
     "patient’s history and examination."),
    ("{A} {age}-year-old with {c} has a temperature of {temp} °C. Should they seek care?",
     "A temperature of {temp} °C in {a} {age}-year-old with {c} should be discussed with a clinician "
     "the same day, especially if {s1} is getting worse."),
    ("How often should {a} {age}-year-old with {c} be followed up?",
     "{A} {age}-year-old with {c} is usually reviewed every {months} months – sooner if {s2} or {s3} "
     "changes."),
    ("Which warning signs of {c} need urgent attention at age {age}?",
     "At age {age}, new or rapidly worsening {s1} in someone with {c} needs urgent review, as does any "
     "sudden change in the patient’s general health."),
)
TOY_MAX_ROWS = len(_TEMPLATES) * len(_NAMES) * len(_AGES)


def _clean_pair(index: int) -> tuple[str, str]:
    t, rest = divmod(index, len(_NAMES) * len(_AGES))
    c_idx, a_idx = divmod(rest, len(_AGES))
    c, age = _NAMES[c_idx], _AGES[a_idx]
    (s1, s2, s3), treatment, test = _CONDITIONS[c]
    article = "an" if age in (11, 18) or str(age).startswith("8") else "a"
    fields = {"c": c, "age": age, "a": article, "A": article.capitalize(), "s1": s1, "s2": s2, "s3": s3, "t": treatment,
              "Test": test[0].upper() + test[1:], "weeks": 2 + index % 6, "months": 3 + 3 * (index % 4),
              "temp": f"{37.5 + (index % 20) / 10:.1f}"}
    q, a = _TEMPLATES[t]
    return q.format(**fields), a.format(**fields)


def _html(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    v = rng.randrange(4)
    if v == 0:
        return q, "<p>" + a.replace(". ", ".</p>\n<p>", 1) + "</p>"
    if v == 1:
        return q, a.replace("’", "&rsquo;").replace(" and ", " &amp; ", 1) + "<br/>"
    if v == 2:
        return q, '<div class="answer">' + a + "</div><script>track('qa');</script>"
    return "<b>" + q + "</b>&nbsp;", a.replace("’", "&#8217;")


def _whitespace(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    words = a.split(" ")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(words))
        words[i] += rng.choice(["  ", "\t", "\u00a0", " \n\n\n"])
    return (q + " " if rng.random() < 0.5 else q), "  " + " ".join(words) + "\n"


def _garbled(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.75:
        return q, a.encode("utf-8").decode("cp1252")
    chars = list(a)
    for _ in range(rng.randint(1, 3)):
        chars.insert(rng.randrange(len(chars)), rng.choice(["\x00", "\x07", "\x1f", "\x7f"]))
    return q, "".join(chars)


def _repetition(q: str, a: str, rng: random.Random) -> tuple[str, str]:
    words = a.split()
    start = rng.randrange(len(words) - 4)
    phrase = " ".join(words[start:start + rng.randint(3, 5)])
    return q, a + " " + " ".join([phrase] * rng.randint(25, 40))


def make_toy_dataset(n: int, seed: int, noise_rate: float = 0.3) -> tuple[Batch, list[str]]:
    """``n`` toy QA rows (deterministic for ``seed``) and one label per row: "clean" or a noise type."""
    if not 1 <= n <= TOY_MAX_ROWS:
        raise DataError(f"toy dataset size must be within [1, {TOY_MAX_ROWS}], got {n}")
    if not 0.0 <= noise_rate <= 1.0:
        raise DataError(f"noise_rate must be within [0, 1], got {noise_rate}")
    rng = random.Random(seed)
    combos = rng.sample(range(TOY_MAX_ROWS), n)
    batch: Batch = {"instruction": [], "answer": []}
    labels: list[str] = []
    clean_rows: list[int] = []
    for i, combo in enumerate(combos):
        q, a = _clean_pair(combo)
        label = rng.choice(NOISE_TYPES) if rng.random() < noise_rate else "clean"
        if label == "duplicate" and not clean_rows:
            label = "clean"  # nothing earlier to copy yet
        if label == "duplicate":
            j = rng.choice(clean_rows)
            q, a = batch["instruction"][j], batch["answer"][j]
        elif label == "html":
            q, a = _html(q, a, rng)
        elif label == "whitespace":
            q, a = _whitespace(q, a, rng)
        elif label == "truncated":
            a = a[:rng.randint(3, 15)]
        elif label == "empty":
            a = rng.choice(["", " ", "\n", "  \t "])
        elif label == "garbled":
            q, a = _garbled(q, a, rng)
        elif label == "repetition":
            q, a = _repetition(q, a, rng)
        if label == "clean":
            clean_rows.append(i)
        batch["instruction"].append(q)
        batch["answer"].append(a)
        labels.append(label)
    return batch, labels
