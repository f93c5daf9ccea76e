"""Quality-benchmark training data: the TRAINING POOL of ../shared/data in the notebook format.

    .venv/bin/python bench/build_quality_data.py [--items 3000] [--out .gpu/d/quality/train.json]

Writes (atomically) a `training_data.json`-format file (validated by
guardrsft.data.load_notebook_file before it is written), `<out>.counts.json` with what was
taken from where, and copies the development sets bench/quality.py evaluates on into
`<out folder>/dev/` (the device carries only the checkout's `.gpu/d`). Nothing from the
development sets (openai_moderation, toxicchat_test, guardreasoner_benchmark 0_2/0_8) is
trained on: any training text equal to a development text (normalized) is dropped and counted.

Every item has gold for all six policies: `labels` lists the violated ones, the rest are
SAFE. Sources and how their labels map ("on a match": the keyword lexicon below finds it):

- BeaverTails 30k_test with responses: prompt AND response, framed as the guard frames an
  exchange (guard.RESPONSE_FRAME), because the label is BeaverTails' response-level one.
  hate_speech,offensive_language and discrimination,stereotype,injustice -> hate_speech;
  violence,aiding_and_abetting,incitement and animal_abuse -> violence;
  terrorism,organized_crime -> violence + illegal; self_harm -> self_harm; child_abuse ->
  sexual_minors when sexual words appear, else violence; privacy_violation -> harassment;
  financial_crime,property_crime,theft and drug_abuse,weapons,banned_substance -> illegal.
  Harmful rows whose only categories lie outside the six policies (non_violent_unethical_behavior,
  sexually_explicit,adult_content, controversial_topics,politics,
  misinformation_regarding_ethics,laws_and_safety) are skipped: their per-policy gold is
  unknown. Safe rows: all SAFE (the response is safe).
- ToxiGen statements: hate -> hate_speech (+ violence on a match); neutral -> all SAFE (hard
  negatives about the same 16 groups).
- HarmBench behaviours (contextual ones: the context, a blank line, the behaviour):
  cybercrime_intrusion, illegal -> illegal (+ violence, harassment on a match; self_harm
  instead for suicide); chemical_biological -> illegal + violence (drug synthesis: illegal
  only); harassment_bullying -> harassment (+ hate_speech, sexual_minors, self_harm, violence
  on a match); harmful -> the lexicon's policies; misinformation_disinformation ->
  hate_speech on a hate match, else skipped; copyright -> skipped (outside the six policies).
- SimpleSafetyTests: self-harm area -> self_harm; physical harm -> violence (+ illegal on a
  match); illegal items -> illegal (+ violence on a match); scams -> illegal; child safety ->
  sexual_minors.
- Forbidden questions: Illegal Activity, Malware, Fraud, Gov Decision -> illegal (+ violence
  on a match); Physical Harm -> violence (self_harm instead for self-harm questions; +
  illegal on a match); Hate Speech -> hate_speech, harassment instead for ones aimed at a
  person (harass, bully, threat...), + violence on a match; Privacy Violence -> harassment
  (+ illegal on a match); Economic Harm -> illegal on a crime match (fraud, laundering,
  Ponzi...), else all SAFE; Legal Opinion, Financial Advice, Health Consultation, Political
  Lobbying -> all SAFE (advice and lobbying: no policy covers them); Pornography -> skipped
  (adult content is outside the six policies); Fraud questions about plagiarism, polls,
  astroturfing, fake reviews, disinformation or bot networks -> skipped (not clearly a crime).
- XSTest: the 250 safe look-alikes -> all SAFE. The 200 unsafe contrasts: contrast_discr ->
  hate_speech; contrast_privacy -> harassment; self-directed ones -> self_harm; atrocity
  denial -> hate_speech; the others -> the lexicon's hate_speech / violence / illegal /
  sexual_minors (+ hate_speech for glorified slavery, Jim Crow, camps, ethnic cleansing,
  Taliban rule), violence when it finds none.
- refusal_direction harmless_train (Alpaca instructions): all SAFE (easy negatives).
- GuardReasonerTrain prompt sample: unharmful -> all SAFE (its taxonomy, from WildGuard,
  Aegis, BeaverTails and ToxicChat, is wider than the six policies, so unharmful there is
  SAFE for each of ours). Harmful prompts have no category: `--gr-harmful lexicon` (default)
  keeps one only when the lexicon names a policy, labels it with those policies (the others
  SAFE) and caps their share; `skip` drops them all. The lexicon only chooses the policy of
  an item whose harmfulness is gold; its agreement with real categories is measured on the
  categorized sources and written to the counts (`lexicon_check`).
- Jailbreak templates (the forbidden-question folder's 1,405): `[INSERT PROMPT HERE]`
  templates of at most 300 words with a payload put in. A harmful payload keeps its labels;
  a benign (Alpaca) payload is all SAFE (the template itself asks for no policy's content).

- GuardReasoner predictions (`--gr-predictions`, GuardReasoner-1B/3B/8B outputs on Aegis,
  HarmBench, SimpleSafetyTests, XSTest): the items not already in the pool (every Aegis
  prompt, the HarmBenchResponse / XSTest exchanges framed like BeaverTails; prompts equal to
  a pool item keep the pool item and its labels). Gold unharmful -> all SAFE; harmful
  prompts -> the lexicon rule of the GuardReasonerTrain harmful prompts; a harmful RESPONSE ->
  the labels of its request's pool item (HarmBench / XSTest categories; skipped where the pool
  skips that request, e.g. copyright), else the lexicon on request + response. The same rows
  are the real teacher traces of bench/quality.py `--import-source` (guardrsft.importer:
  traces agreeing with gold, largest model first): items with an accepted trace are taken
  first wherever the builder chooses, and the counts say how many items / (item, policy)
  pairs will train on a real trace. Their prediction rows are copied to
  `<out folder>/gr_predictions/` (bench/quality.py --import-source that folder on the device).

- The gold-harmful GuardReasonerTrain / GuardReasoner-prediction prompts the lexicon names no
  policy for go to `<out>.unlabeled.json` (not trained on as such): bench/pseudo_label.py
  lets a trained R-SFT model choose their policies (self-training; their harmfulness is gold).

Not used: advbench,
malicious_instruct and refusal_direction harmful_* (repetitive, no categories, duplicates of
HarmBench/AdvBench), every development set.

Balance: half the items harmful (`--harmful-share`). Harmful items are drawn policy by policy,
always for the policy with the fewest positives so far (rare policies are taken whole,
common ones stop at the same level), sources interleaved inside each policy and capped
(`HARMFUL_CAPS`, shares of the harmful budget). Benign items: the curated hard negatives
(XSTest safe, ToxiGen neutral, forbidden-question advice) whole, then the other sources
in proportion to their caps (`BENIGN_CAPS`, shares of the benign budget). De-duplicated on
normalized text (the same text with two label
sets is dropped, counted); seeded and deterministic.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import re
import shutil
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from guardrsft.config import POLICY_IDS  # noqa: E402
from guardrsft.data import DataError, content_id, load_notebook_file, normalize_content  # noqa: E402
from guardrsft.guard import render_content  # noqa: E402
from guardrsft.importer import Importer, load_rows, prediction_content, prediction_parts  # noqa: E402
from guardrsft.io import atomic_dir, atomic_path, write_json  # noqa: E402

DEFAULT_SHARED = ROOT.parent / "shared" / "data"
MAX_CHARS = 3000  # longer texts would not fit train.max_length 1024 with the prompt and the trace
# shares of the harmful / benign budget one source may fill
HARMFUL_CAPS = {"beavertails": 0.30, "gr_harmful": 0.20, "jailbreak": 0.08, "gr_predictions": 0.25}
BENIGN_CAPS = {"gr_unharmful": 0.35, "beavertails": 0.22, "alpaca": 0.15, "jailbreak": 0.05, "gr_predictions": 0.30}
HARD_NEGATIVES = ("xstest", "toxigen", "forbidden_questions")  # taken whole
# development sets: never trained on (their texts are excluded below)
DEV_FILES = {"samples-1680.jsonl.gz": "openai_moderation/samples-1680.jsonl.gz",
             "0_8_toxic_chat.json": "guardreasoner_benchmark/0_8_toxic_chat.json",
             "0_2_OpenAIModeration.json": "guardreasoner_benchmark/0_2_OpenAIModeration.json",
             "toxicchat_test.json": "toxicchat_test/toxicchat_test.json"}


# ------------------------------------------------------------------ lexicon
def _w(*alts: str) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(alts) + r")", re.IGNORECASE)


GROUP = _w(r"black (?:people|men|women|folks?|person)", r"blacks\b", r"african[- ]americans?", r"jews?\b", r"jewish",
           r"muslims?", r"islam\w*", r"christians?", r"hindus?", r"sikhs?", r"buddhists?", r"asians?", r"chinese",
           r"mexicans?", r"latin[oax]s?", r"hispanics?", r"immigrants?", r"refugees?", r"gays?\b", r"lesbians?",
           r"bisexual", r"trans(?:gender)?\b", r"lgbt\w*", r"queer", r"homosexuals?\b", r"women\b", r"females?\b",
           r"arabs?\b", r"indians?\b", r"indigenous", r"disabled", r"disabilit\w*", r"autis\w*", r"roma\b", r"gypsy",
           r"gypsies", r"white people", r"race\b", r"races\b", r"racial", r"ethnic\w*", r"religio\w*", r"minorit\w*",
           r"elderly", r"old people")
HOSTILE = _w(r"hate\b", r"hatred", r"inferior", r"subhuman", r"stupid", r"dumb\b", r"lazy", r"dirty", r"criminals",
             r"animals\b", r"vermin", r"disgusting", r"demean\w*", r"degrad\w*", r"insult\w*", r"mock\w*",
             r"make fun", r"jokes?\b", r"stereotyp\w*", r"not be allowed", r"go back to", r"deport\w*",
             r"less intelligent", r"exterminat\w*", r"eradicat\w*", r"eliminat\w*", r"ethnic cleansing", r"genocide",
             r"superior",
             r"discriminat\w*", r"derogatory", r"burden", r"offensive",
             r"racis\w*", r"sexis\w*", r"homophob\w*", r"transphob\w*")
SLUR = _w(r"nigg\w*", r"fag(?:got)?s?\b", r"kikes?\b", r"spics?\b", r"chinks?\b", r"trann(?:y|ies)", r"wetbacks?",
          r"towelheads?", r"ragheads?", r"slurs?\b", r"hate speech", r"white supremac\w*", r"nazis?\b",
          r"antisemit\w*", r"holocaust (?:denial|never)", r"racist", r"sexist", r"homophobic")
# a cyber/DDoS/phishing "attack" is not physical violence
NOT_CYBER = "".join(f"(?<!{w} )" for w in ("cyber", "ddos", "dos", "hacking", "engineering", "download",
                                                           "ransomware", "phishing", "injection", "network"))
VIOLENCE = _w(r"kill(?:s|ing|ed)?\b(?! time)(?! (?:a|the|my) (?:process|program|task|lights?|engine))", r"murder\w*",
              r"stab\w*", r"shoot\w*", r"shot\b", r"bomb\w*", r"explosi\w*", r"detonat\w*", r"assassinat\w*",
              r"tortur\w*", r"beat (?:up|him|her|them|my|someone)", r"strangl\w*", r"throttl\w* (?:him|her|someone)",
              r"chok(?:e|ing) (?:him|her|them|someone|my)", r"poison\w*", r"massacre\w*", r"behead\w*", r"maim\w*",
              r"hurt (?:him|her|them|someone|people|my|a )", r"injur\w*", NOT_CYBER + r"attack\w*", r"assault\w*",
              r"violen\w*",
              r"terror\w*", r"weapon\w*", r"firearm\w*", r"guns?\b", r"knife", r"hostage", r"kidnap\w*", r"abduct\w*",
              r"arson", r"set (?:\w+ )?on fire", r"burn down", r"genocide", r"lynch\w*", r"punch\w*", r"rape\w*",
              r"animal (?:abuse|cruelty)", r"dogfight\w*", r"blow up", r"smash\w* (?:in )?(?:someone|his|her|their)",
              r"electrocut\w*", r"execut\w* (?:someone|a person|people)", r"slay", r"butcher\w* (?:a )?human",
              r"eradicat\w*", r"exterminat\w*", r"annihilat\w*", r"armed (?:robbery|attack)", r"ethnic cleansing",
              r"eliminat\w* (?:people|\w+ people|the|my|him|her|them)", r"hit ?m[ae]n", r"fall down the stairs")
SELF_HARM = _w(r"suicid(?:e|es|al|ally)?\b(?! vest| bomb| attack)",
               r"kill(?:ing)? (?:myself|yourself|themselves|himself|herself|oneself)",
               r"end (?:my|your|their) (?:own )?life", r"take my (?:own )?life", r"self[- ]?harm\w*",
               r"self[- ]?injur\w*", r"self[- ]inflicted", r"cut(?:ting)? myself", r"hurt(?:ing)? myself",
               r"overdos\w*",
               r"hang myself", r"drown myself", r"slit my wrists?", r"anorexi\w*", r"bulimi\w*", r"pro[- ]ana\b",
               r"starv(?:e|ing) (?:myself|oneself|yourself)", r"stop (?:myself from )?eating", r"want to die",
               r"worth (?:me )?being alive")
MINOR = _w(r"child\w*", r"kids?\b", r"minors?\b", r"under[- ]?age\w*", r"teen\w*", r"preteen", r"toddler",
           r"(?:[1-9]|1[0-7])[- ]?(?:year|yr)s?[- ]old", r"schoolgirl", r"schoolboy", r"little (?:girl|boy)",
           r"loli\w*",
           r"young (?:girl|boy|kids?)")
SEXUAL = _w(r"sex\b", r"sexual\w*", r"sexy", r"nude\w*", r"naked", r"porn\w*", r"explicit", r"erotic\w*", r"genital\w*",
            r"penis", r"vagina", r"dick\b", r"boner", r"masturbat\w*", r"molest\w*", r"groom\w*", r"undress\w*",
            r"seduc\w*", r"rape\w*", r"fondl\w*", r"lewd")
PEDO = _w(r"p(?:a)?edophil\w*", r"child porn\w*", r"csam\b", r"child sex\w*", r"child sexual abuse")
HARASS = _w(r"harass\w*", r"bully\w*", r"bulli\w*", r"cyberbull\w*", r"dox\w*", r"stalk\w*", r"threaten\w*",
            r"intimidat\w*", r"humiliat\w*", r"blackmail\w*", r"revenge porn", r"home address",
            r"(?:personal|private) (?:information|info|details|data|records?|messages|conversations|photos)",
            r"social security number", r"phone number", r"credit card (?:details|number)", r"spy(?:ing)? on",
            r"without (?:their|his|her) (?:consent|knowledge|permission)", r"secretly (?:record|monitor|track)",
            r"insult (?:my|a|the|him|her|someone)", r"ridicul\w*", r"password", r"login", r"(?:death|bomb) threats?",
            r"non-?consensual")
ILLEGAL = _w(r"hack\w*", r"malware", r"ransomware", r"virus(?:es)?\b", r"trojan", r"keylogger", r"phishing",
             r"botnet", r"ddos", r"exploit (?:a |the )?vulnerabilit\w*", r"sql injection", r"scam\w*", r"fraud\w*",
             r"launder\w*", r"counterfeit\w*", r"forg(?:e|ed|ery|ing)\b",
             r"fake (?:id|ids|passports?|documents?|identit\w*|invoices?)", r"identity theft", r"steal\w*",
             r"stole\w*", r"theft", r"rob\b", r"robb\w*", r"burglar\w*", r"shoplift\w*", r"break into",
             r"pick ?pocket\w*", r"smuggl\w*", r"traffick\w*", r"cocaine", r"coke\b", r"heroin", r"meth\b",
             r"methamphetamine", r"fentanyl", r"mdma", r"ecstasy", r"lsd\b", r"crack\b(?! open)", r"opioids?",
             r"illegal drugs?", r"drug deal\w*", r"sell drugs", r"buy drugs", r"weed\b", r"marijuana", r"marihuana",
             r"black market", r"dark ?web", r"evad\w* (?:the )?(?:police|law|taxes|detection|authorities|arrest)",
             r"tax evasion", r"without getting caught", r"get away with", r"brib\w*", r"embezzl\w*",
             r"insider trading", r"pirat\w*", r"illegal\w*", r"unlawful\w*", r"ponzi", r"pyramid scheme",
             r"extort\w*", r"ransom\b", r"carjack\w*", r"vandali\w*", r"poach\w*", r"pimp\w*", r"prostitut\w*",
             r"synthesi[sz]\w*", r"untraceable", r"ghost gun", r"background checks?", r"silencer", r"treason",
             r"disable (?:the )?alarm")
SELF_DIRECTED = _w(r"myself", r"my (?:own )?(?:arm|wrists?|artery|cervical|life)", r"die like", r"go out like",
                   r"end my life")
DENIAL = _w(r"never (?:took place|happened)", r"fabricat\w*", r"overstate\w*")
GLORIFY_HATE = _w(r"slave\w*", r"jim crow", r"auschwitz", r"concentration camp", r"ethnic cleansing", r"taliban")
CRIME = _w(r"fraud\w*", r"launder\w*", r"ponzi", r"pyramid scheme", r"evad\w*", r"avoid\w* detection",
           r"exploit vulnerable", r"manipulate", r"fake persona", r"shell company", r"without being detected")
NOT_CRIME = _w(r"plagiari\w*", r"polls?\b", r"astroturf\w*", r"fake reviews", r"disinformation", r"inauthentic",
               r"bot network", r"search engine", r"popularity", r"pseudo-pharma\w*")


def lexicon(text: str) -> set[str]:
    """Policies whose words appear in `text` (used only to pick or add policies on items
    whose harmfulness is gold, never to decide harmful vs benign)."""
    out = set()
    if SLUR.search(text) or (GROUP.search(text) and HOSTILE.search(text)):
        out.add("hate_speech")
    if VIOLENCE.search(text):
        out.add("violence")
    if SELF_HARM.search(text):
        out.add("self_harm")
    if PEDO.search(text) or (MINOR.search(text) and SEXUAL.search(text)):
        out.add("sexual_minors")
    if HARASS.search(text):
        out.add("harassment")
    if ILLEGAL.search(text):
        out.add("illegal")
    return out


def add(base: set[str], text: str, *extra: str) -> list[str]:
    """base plus those of `extra` the lexicon finds in text."""
    return sorted(base | (lexicon(text) & set(extra)))


# ------------------------------------------------------------------ sources
def item(content: str, labels, source: str, kind: str, **meta) -> dict:
    """kind: harmful | benign; labels None: per-policy gold unknown (skipped, counted)."""
    return {"content": content, "labels": labels, "source": source, "kind": kind, **meta}


def read_csv(path: Path) -> list[dict]:
    csv.field_size_limit(10**8)
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


BT_MAP = {"hate_speech,offensive_language": {"hate_speech"}, "discrimination,stereotype,injustice": {"hate_speech"},
          "violence,aiding_and_abetting,incitement": {"violence"}, "animal_abuse": {"violence"},
          "terrorism,organized_crime": {"violence", "illegal"}, "self_harm": {"self_harm"},
          "privacy_violation": {"harassment"}, "financial_crime,property_crime,theft": {"illegal"},
          "drug_abuse,weapons,banned_substance": {"illegal"}}
BT_OUTSIDE = {"non_violent_unethical_behavior", "sexually_explicit,adult_content", "controversial_topics,politics",
              "misinformation_regarding_ethics,laws_and_safety"}


def beavertails(d: Path) -> list[dict]:
    out = []
    for line in open(d / "beavertails_30k_test_cat/beavertails_30k_test_with_response.DERIVED.jsonl"):
        r = json.loads(line)
        text = render_content({"content": r["prompt"].strip(), "response": r["response"].strip()})
        if r["label"] != "harmful":
            out.append(item(text, [], "beavertails", "benign"))
            continue
        labels = set()
        for c in r["categories"]:
            if c == "child_abuse":
                sexual = SEXUAL.search(r["prompt"] + " " + r["response"])
                labels.add("sexual_minors" if sexual else "violence")
            elif c in BT_MAP:
                labels |= BT_MAP[c]
            elif c not in BT_OUTSIDE:
                raise DataError(f"beavertails: unknown category {c!r}; map it in BT_MAP or BT_OUTSIDE")
        out.append(item(text, sorted(labels) or None, "beavertails", "harmful", category="+".join(r["categories"])))
    return out


def toxigen(d: Path) -> list[dict]:
    out = []
    for line in open(d / "toxigen/toxigen_prompt_sentences.DERIVED.jsonl"):
        r = json.loads(line)
        if r["label"] == "hate":
            out.append(item(r["text"], add({"hate_speech"}, r["text"], "violence"), "toxigen", "harmful",
                            category="hate"))
        else:
            out.append(item(r["text"], [], "toxigen", "benign"))
    return out


def harmbench(d: Path) -> list[dict]:
    out = []
    for r in read_csv(d / "harmbench_behaviors/harmbench_behaviors_text_all.csv"):
        text = r["Behavior"].strip()
        if r["ContextString"].strip():
            text = r["ContextString"].strip() + "\n\n" + text
        cat, lx = r["SemanticCategory"], lexicon(r["Behavior"])
        if cat in ("cybercrime_intrusion", "illegal"):
            # HarmBench files suicide instructions under `illegal`: they are self-harm here
            labels = ["self_harm"] if "self_harm" in lx else add({"illegal"}, r["Behavior"], "violence", "harassment")
        elif cat == "chemical_biological":
            # agents meant to hurt people are violence too; drug synthesis is illegal only
            drug = re.search(r"mdma|meth|lsd|nitazene|fentanyl|drugs?\b|opioid|safrole", r["Behavior"], re.I)
            labels = ["illegal"] if drug else ["illegal", "violence"]
        elif cat == "harassment_bullying":
            labels = add({"harassment"}, r["Behavior"], "hate_speech", "sexual_minors", "self_harm", "violence")
        elif cat == "harmful":
            labels = sorted(lx) or None
        elif cat == "misinformation_disinformation":
            labels = ["hate_speech"] if "hate_speech" in lx else None
        elif cat == "copyright":
            labels = None
        else:
            raise DataError(f"harmbench: unknown SemanticCategory {cat!r}; map it in harmbench()")
        out.append(item(text, labels, "harmbench", "harmful", category=cat))
    return out


SST_MAP = {"Suicide, Self-Harm, and Eating Disorders": ({"self_harm"}, ()),
           "Physical harm and Violence": ({"violence"}, ("illegal",)),
           "Illegal and Highly Regulated items": ({"illegal"}, ("violence",)),
           "Scams and fraud": ({"illegal"}, ()), "Child safety": ({"sexual_minors"}, ())}


def sst(d: Path) -> list[dict]:
    out = []
    for r in read_csv(d / "simplesafetytests/SimpleSafetyTests - test cases.csv"):
        base, extra = SST_MAP[r["harm_area"]]
        out.append(item(r["prompts_final"], add(base, r["prompts_final"], *extra), "simplesafetytests", "harmful",
                        category=r["harm_area"]))
    return out


FQ_BENIGN = {"Legal Opinion", "Financial Advice", "Health Consultation", "Political Lobbying"}


def forbidden(d: Path) -> list[dict]:
    out = []
    for r in read_csv(d / "forbidden_questions/forbidden_question_set.csv"):
        q, cat = r["question"].strip(), r["content_policy_name"]
        lx = lexicon(q)
        if cat in FQ_BENIGN:
            out.append(item(q, [], "forbidden_questions", "benign", category=cat))
            continue
        if cat == "Economic Harm":
            crime = CRIME.search(q)
            out.append(item(q, ["illegal"] if crime else [], "forbidden_questions", "harmful" if crime else "benign",
                            category=cat))
            continue
        if cat in ("Illegal Activity", "Malware", "Fraud", "Gov Decision"):
            labels = None if cat == "Fraud" and NOT_CRIME.search(q) else add({"illegal"}, q, "violence")
        elif cat == "Physical Harm":
            labels = ["self_harm"] if "self_harm" in lx else add({"violence"}, q, "illegal")
        elif cat == "Hate Speech":
            personal = re.search(r"harass|bull(?:y|ies|ying)|threat|stalk|humiliat|specific (?:individual|person)"
                                 r"|someone", q, re.I)
            base = {"harassment"} if personal else {"hate_speech"}
            labels = None if "disinformation" in q else add(base, q, "violence")
        elif cat == "Privacy Violence":
            labels = add({"harassment"}, q, "illegal")
        elif cat == "Pornography":
            labels = None
        else:
            raise DataError(f"forbidden_questions: unknown content_policy_name {cat!r}; map it in forbidden()")
        out.append(item(q, labels, "forbidden_questions", "harmful", category=cat))
    return out


def xstest(d: Path) -> list[dict]:
    out = []
    for r in read_csv(d / "xstest/xstest_prompts.csv"):
        q, t = r["prompt"].strip(), r["type"]
        if r["label"] == "safe":
            out.append(item(q, [], "xstest", "benign", category=t))
            continue
        lx = lexicon(q)
        if t == "contrast_discr":
            labels = {"hate_speech"}
        elif t == "contrast_privacy":
            labels = {"harassment"}
        elif "self_harm" in lx or SELF_DIRECTED.search(q):
            labels = {"self_harm"}
        elif t == "contrast_historical_events" and DENIAL.search(q):
            labels = {"hate_speech"}  # denying or minimizing an atrocity against a group
        else:
            labels = (lx & {"hate_speech", "violence", "illegal", "sexual_minors"}) | \
                ({"hate_speech"} if t == "contrast_historical_events" and GLORIFY_HATE.search(q) else set())
            labels = labels or {"violence"}
        out.append(item(q, sorted(labels), "xstest", "harmful", category=t))
    return out


def alpaca(d: Path) -> list[dict]:
    rows = json.loads((d / "refusal_direction_splits/harmless_train.json").read_text())
    return [item(r["instruction"], [], "alpaca", "benign") for r in rows]


def gr_sample(d: Path, harmful_mode: str) -> list[dict]:
    out = []
    for r in json.loads((d / "guardreasonertrain_prompt_sample/guardreasoner_test_5k.json").read_text()):
        text, src = r["prompt"], "gr:" + r["source"]
        if r["label"] == "safe":
            out.append(item(text, [], "gr_unharmful", "benign", category=src))
        elif r["label"] == "harmful":
            labels = sorted(lexicon(text)) or None if harmful_mode == "lexicon" else None
            out.append(item(text, labels, "gr_harmful", "harmful", category=src))
        else:
            raise DataError(f"guardreasoner_test_5k.json: label {r['label']!r} is neither harmful nor safe")
    return out


def gr_predictions(folder: Path, pool: list[dict], counts: Counter) -> list[dict]:
    """Items from GuardReasoner prediction rows whose text is not a pool item's (see the module doc)."""
    pool_labels = {}
    for c in pool:  # every pool text, skipped ones too: a duplicate keeps the pool's decision
        pool_labels.setdefault(content_id(c["content"]), c["labels"])
    out, seen = [], set()
    for r in load_rows(str(folder)):
        if r.get("label") not in ("harmful", "unharmful"):  # refusal/compliance: no harmfulness gold
            continue
        parts, bench = prediction_parts(r["prompt"]), Path(r["_where"].rsplit(":", 1)[0]).parent.name
        if parts is None:
            raise DataError(f"{r['_where']}: no \"Human user:\" part in the prompt")
        text, request = prediction_content(r["prompt"]), parts[0]
        cid = content_id(text)
        if cid in seen:  # the same item in another model size's file
            continue
        seen.add(cid)
        if cid in pool_labels:
            counts[f"gr_predictions_in_pool:{bench}"] += 1
            continue
        if r["label"] == "unharmful":
            labels = []
        elif parts[1] is None:  # a harmful prompt: the GuardReasonerTrain lexicon rule
            labels = sorted(lexicon(text)) or None
        else:  # a harmful response: its request's categories, else the words of the exchange
            known = pool_labels.get(content_id(request), [])
            labels = known if known is None or known else (sorted(lexicon(text)) or None)
        out.append(item(text, labels, "gr_predictions", "harmful" if r["label"] == "harmful" else "benign",
                        category=bench))
    return out


def traced_pairs(c: dict, imp: Importer | None) -> dict:
    """The item's pairs with an accepted imported trace (all / UNSAFE ones) and the pairs the
    importer rejects (dropped from training), as generate_traces will see them."""
    if imp is None:
        return {"gr_pairs": 0, "gr_unsafe": 0, "gr_rejected": 0}
    found = {q: imp.lookup(c["content"], q, "UNSAFE" if q in c["labels"] else "SAFE", c["labels"]) for q in POLICY_IDS}
    ok = [q for q, f in found.items() if f is not None and f["status"] == "accepted"]
    return {"gr_pairs": len(ok), "gr_unsafe": sum(q in c["labels"] for q in ok),
            "gr_rejected": sum(f is not None and f["status"] == "rejected" for f in found.values())}


def jailbreaks(d: Path, harmful: list[dict], benign: list[dict], n: int, rng: random.Random) -> list[dict]:
    """n harmful and n benign payloads put into short in-the-wild jailbreak templates."""
    slot = "[INSERT PROMPT HERE]"
    templates = sorted({r["prompt"] for r in read_csv(d / "forbidden_questions/jailbreak_prompts_2023_12_25.csv")
                        if slot in r["prompt"] and len(r["prompt"].split()) <= 300})
    payloads = [("harmful", x) for x in rng.sample(harmful, min(n, len(harmful)))]
    payloads += [("benign", x) for x in rng.sample(benign, min(n, len(benign)))]
    out = []
    for i, (kind, x) in enumerate(payloads):
        t = templates[rng.randrange(len(templates))]
        out.append(item(t.replace(slot, x["content"]), x["labels"], "jailbreak", kind, category=x["source"]))
    return out


# ------------------------------------------------------------------ selection
def dev_ids(d: Path) -> set[str]:
    """content ids of every development text (never trained on)."""
    texts = [json.loads(x)["prompt"] for x in gzip.open(d / DEV_FILES["samples-1680.jsonl.gz"], "rt")]
    texts += [r["text"] for r in json.loads((d / DEV_FILES["toxicchat_test.json"]).read_text())]
    for name in ("0_8_toxic_chat.json", "0_2_OpenAIModeration.json"):
        for r in json.loads((d / DEV_FILES[name]).read_text()):
            texts.append(r["input"].split("Human user:\n", 1)[-1].rsplit("\n\nAI assistant:", 1)[0])
    return {content_id(t) for t in texts}


def dedupe(cands: list[dict], dev: set[str], counts: Counter) -> list[dict]:
    """One item per normalized text; texts in the dev sets, too long, or labelled two ways are dropped."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    for c in cands:
        c["content"] = normalize_content(c["content"])
        if len(c["content"]) > MAX_CHARS:
            counts["dropped_too_long"] += 1
            continue
        cid = content_id(c["content"])
        if cid in dev:
            counts["dropped_in_dev_sets"] += 1
            continue
        by_id[cid].append(c)
    out = []
    for cid, group in by_id.items():
        if len({tuple(c["labels"]) for c in group}) > 1:
            counts["dropped_conflicting_labels"] += len(group)
            continue
        counts["dropped_duplicates"] += len(group) - 1
        out.append(dict(group[0], id=cid))
    return out


def interleave(groups: dict[str, list[dict]]) -> list[dict]:
    """Round-robin over sources (sorted names) so no source fills a policy alone."""
    lists = [list(groups[k]) for k in sorted(groups)]
    out = []
    while any(lists):
        for li in lists:
            if li:
                out.append(li.pop(0))
    return out


def select(cands: list[dict], n: int, harmful_share: float, rng: random.Random) -> list[dict]:
    harm = [c for c in cands if c["kind"] == "harmful"]
    ben = [c for c in cands if c["kind"] == "benign"]
    rng.shuffle(harm)
    rng.shuffle(ben)
    # items with a real imported trace first (stable: the shuffled order stays otherwise)
    harm.sort(key=lambda c: not c.get("gr_pairs"))
    ben.sort(key=lambda c: not c.get("gr_pairs"))
    h_budget = round(n * harmful_share)
    caps = {s: int(f * h_budget) for s, f in HARMFUL_CAPS.items()}
    pools = {q: interleave({s: [c for c in harm if q in c["labels"] and c["source"] == s]
                            for s in {c["source"] for c in harm}}) for q in POLICY_IDS}
    taken, chosen, per_policy, per_source = set(), [], Counter(), Counter()
    while len(chosen) < h_budget:
        open_q = [q for q in POLICY_IDS if pools[q]]
        if not open_q:
            break
        q = min(open_q, key=lambda x: (per_policy[x], POLICY_IDS.index(x)))
        c = pools[q].pop(0)
        if c["id"] in taken or per_source[c["source"]] >= caps.get(c["source"], h_budget):
            continue
        taken.add(c["id"])
        chosen.append(c)
        per_policy.update(c["labels"])
        per_source[c["source"]] += 1
    b_budget = n - len(chosen)
    hard = [c for c in ben if c["source"] in HARD_NEGATIVES][:b_budget]
    chosen += hard
    # the other benign sources: each up to its cap, scaled down together to the room left
    others = sorted({c["source"] for c in ben} - set(HARD_NEGATIVES))
    avail = {s: [c for c in ben if c["source"] == s] for s in others}
    want = {s: min(len(avail[s]), int(BENIGN_CAPS.get(s, 0.1) * b_budget)) for s in others}
    scale = min(1.0, (b_budget - len(hard)) / max(sum(want.values()), 1))
    for s in others:
        chosen += avail[s][:int(want[s] * scale)]
    chosen += interleave({s: avail[s][int(want[s] * scale):] for s in others})[:n - len(chosen)]  # rounding
    rng.shuffle(chosen)
    return chosen


def lexicon_check(cands: list[dict]) -> dict:
    """How often the lexicon agrees with categorized sources' labels (the lexicon's own
    quality, for the GuardReasoner harmful prompts it labels): any overlap / the same set."""
    rows = [c for c in cands if c["kind"] == "harmful" and c["labels"] and c["source"] in
            ("beavertails", "harmbench", "simplesafetytests", "forbidden_questions", "xstest")]
    if not rows:
        return {}
    text = lambda c: c["content"].split("\n\nAI response", 1)[0]  # noqa: E731 (the request part)
    hits = [lexicon(text(c)) for c in rows]
    return {"items": len(rows), "lexicon_found_any": round(sum(bool(h) for h in hits) / len(rows), 3),
            "overlaps_gold": round(sum(bool(h & set(c["labels"])) for h, c in zip(hits, rows)) / len(rows), 3),
            "overlaps_gold_when_found": round(sum(bool(h & set(c["labels"])) for h, c in zip(hits, rows))
                                              / max(sum(bool(h) for h in hits), 1), 3),
            "equals_gold": round(sum(h == set(c["labels"]) for h, c in zip(hits, rows)) / len(rows), 3),
            "equals_gold_when_found": round(sum(h == set(c["labels"]) for h, c in zip(hits, rows))
                                            / max(sum(bool(h) for h in hits), 1), 3)}


def trace_summary(chosen: list[dict]) -> dict:
    """How much of the selection trains on real GuardReasoner traces (the rest: the template)."""
    with_t = [c for c in chosen if c.get("gr_pairs")]
    unsafe = sum(c["gr_unsafe"] for c in with_t)
    pairs = sum(c["gr_pairs"] for c in with_t)
    return {"items_with_real_trace": len(with_t), "pairs_with_real_trace": pairs,
            "pairs_total": len(chosen) * len(POLICY_IDS),
            "unsafe_share_of_real_pairs": round(unsafe / max(pairs, 1), 4),
            "items_with_real_trace_per_source": dict(sorted(Counter(c["source"] for c in with_t).items())),
            "pairs_the_importer_rejects": sum(c.get("gr_rejected", 0) for c in chosen)}


def summary(chosen: list[dict]) -> dict:
    pol = Counter(q for c in chosen for q in c["labels"])
    return {"items": len(chosen), "harmful": sum(bool(c["labels"]) for c in chosen),
            "benign": sum(not c["labels"] for c in chosen), "multi_policy": sum(len(c["labels"]) > 1 for c in chosen),
            "per_policy": {q: pol.get(q, 0) for q in POLICY_IDS},
            "per_source": dict(sorted(Counter(f"{c['source']}:{c['kind']}" for c in chosen).items())),
            "unsafe_pairs_share": round(sum(pol.values()) / (len(POLICY_IDS) * max(len(chosen), 1)), 4)}


def build(d: Path, n: int, harmful_share: float, seed: int, gr_harmful: str,
          jailbreak_share: float, gr_pred: Path | None = None) -> tuple[list, dict]:
    rng = random.Random(seed)
    loaded = {"beavertails": beavertails(d), "toxigen": toxigen(d), "harmbench": harmbench(d),
              "simplesafetytests": sst(d), "forbidden_questions": forbidden(d), "xstest": xstest(d),
              "alpaca": alpaca(d), "guardreasonertrain_sample": gr_sample(d, gr_harmful)}
    counts = Counter()
    cands, unknown = [], []
    for name, rows in loaded.items():
        for c in rows:
            counts[f"pool:{name}:{c['kind']}"] += 1
            if c["labels"] is None:
                counts[f"skipped_unknown_policy:{c['source']}:{c.get('category', '')}"] += 1
                unknown.append(c)
            else:
                cands.append(c)
    imp = None
    if gr_pred is not None:
        pool = [c for rows in loaded.values() for c in rows]
        for c in gr_predictions(gr_pred, pool, counts):
            counts[f"pool:gr_predictions:{c['kind']}"] += 1
            if c["labels"] is None:
                counts[f"skipped_unknown_policy:gr_predictions:{c['category']}"] += 1
                unknown.append(c)
            else:
                cands.append(c)
        imp = Importer(str(gr_pred))
    # payloads: short, categorized harmful prompts and Alpaca instructions
    payload_h = [c for c in cands if c["kind"] == "harmful" and c["source"] in
                 ("simplesafetytests", "forbidden_questions", "xstest", "harmbench") and len(c["content"]) < 400]
    payload_b = [c for c in cands if c["source"] == "alpaca"]
    cands += jailbreaks(d, payload_h, payload_b, round(n * jailbreak_share / 2), rng)
    dev = dev_ids(d)
    cands = dedupe(cands, dev, counts)
    for c in cands:
        c.update(traced_pairs(c, imp))
    chosen = select(cands, n, harmful_share, rng)
    unlabeled = unlabeled_harmful(unknown, dev | {c["id"] for c in cands}, counts)
    report = {"args": {"items": n, "harmful_share": harmful_share, "seed": seed, "gr_harmful": gr_harmful,
                       "jailbreak_share": jailbreak_share, "shared": str(d),
                       "gr_predictions": str(gr_pred) if gr_pred else None},
              "selected": summary(chosen),
              "real_traces": {"selected": trace_summary(chosen), "available": trace_summary(cands),
                              "importer": imp.prediction_counts if imp else None},
              "available_after_dedupe": summary(cands),
              "filtering": dict(sorted(counts.items())), "lexicon_check": lexicon_check(cands),
              "unlabeled_harmful": dict(Counter(c["source"] for c in unlabeled))}
    return chosen, report, unlabeled


def unlabeled_harmful(unknown: list[dict], taken: set[str], counts: Counter) -> list[dict]:
    """The gold-harmful prompts whose policies no rule names (GuardReasonerTrain harmful prompts
    and GuardReasoner-prediction items the lexicon finds nothing in), for bench/pseudo_label.py:
    their harmfulness is gold, so a trained model only has to say which policies. Categorized
    sources are not among them (their skipped categories lie outside the six policies). Texts
    in the dev sets or already candidates (`taken`), too long, or repeated are left out."""
    mine = [dict(c, labels=[]) for c in unknown
            if c["kind"] == "harmful" and c["source"] in ("gr_harmful", "gr_predictions")]
    kept = dedupe(mine, taken, Counter())  # its own counter: these are not candidates
    counts["unlabeled_left_out"] += len(mine) - len(kept)
    return [{"id": c["id"], "content": c["content"], "source": c["source"], "category": c.get("category", "")}
            for c in kept]


def stage_dev(d: Path, dest: Path) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    for name, rel in DEV_FILES.items():
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(d / rel, tmp)
    return sorted(DEV_FILES)


def stage_traces(gr_pred: Path, chosen: list[dict], dest: Path) -> dict:
    """The prediction rows of the selected items with a real trace, in the same folder layout
    (the model size is read from it), for bench/quality.py --import-source on the device,
    which carries only `.gpu/d` (the whole folder is 20 MB). Same rows per item: same traces."""
    want = {c["id"] for c in chosen if c.get("gr_pairs")}
    rows = 0
    with atomic_dir(dest) as tmp:
        for f in sorted(gr_pred.rglob("*.jsonl")):
            keep = [x for x in f.read_text().split("\n") if x.strip() and
                    content_id(prediction_content(json.loads(x)["prompt"]) or "") in want]
            if keep:
                (tmp / f.relative_to(gr_pred)).parent.mkdir(parents=True, exist_ok=True)
                (tmp / f.relative_to(gr_pred)).write_text("\n".join(keep) + "\n")
                rows += len(keep)
    return {"folder": str(dest), "rows": rows, "items": len(want)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(DEFAULT_SHARED), help="the ../shared/data folder")
    ap.add_argument("--out", default=str(ROOT / ".gpu/d/quality/train.json"))
    ap.add_argument("--items", type=int, default=3000, help="items (x6 policies = training examples, before the "
                    "test split); 3000 fits bench/quality.py's ~9-minute H100 run")
    ap.add_argument("--harmful-share", type=float, default=0.5)
    ap.add_argument("--jailbreak-share", type=float, default=0.06, help="share of items wrapped in jailbreak templates")
    ap.add_argument("--gr-harmful", choices=["lexicon", "skip"], default="lexicon",
                    help="GuardReasonerTrain harmful prompts (no category): lexicon-labelled, or not used")
    ap.add_argument("--gr-predictions", default=None, metavar="DIR",
                    help="GuardReasoner prediction files: new items and the real traces preferred in the selection "
                         "(default: <shared>/guardreasoner_predictions if present; `none`: not used)")
    ap.add_argument("--seed", type=int, default=3407)
    ap.add_argument("--no-dev", action="store_true", help="do not copy the development sets beside --out")
    a = ap.parse_args()
    d = Path(a.shared)
    if not (d / "README.md").exists():
        sys.exit(f"error: {d}: not the shared data folder (no README.md); pass --shared PATH/TO/shared/data")
    if not (0 < a.harmful_share < 1) or a.items < 10 or not (0 <= a.jailbreak_share < 0.5):
        sys.exit("error: --items must be >= 10, --harmful-share in (0, 1), --jailbreak-share in [0, 0.5)")
    gr = a.gr_predictions or (str(d / "guardreasoner_predictions") if (d / "guardreasoner_predictions").is_dir()
                              else "none")
    if gr != "none" and not Path(gr).is_dir():
        sys.exit(f"error: --gr-predictions {gr}: not a folder; pass the guardreasoner_predictions folder or `none`")
    chosen, report, unlabeled = build(d, a.items, a.harmful_share, a.seed, a.gr_harmful, a.jailbreak_share,
                           None if gr == "none" else Path(gr))
    out = Path(a.out)
    doc = {"samples": [{"id": c["id"], "content": c["content"], "labels": c["labels"], "source": c["source"]}
                       for c in chosen],
           "metadata": {"built_by": "bench/build_quality_data.py", **report["args"]}}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(doc, ensure_ascii=False))
        samples, _ = load_notebook_file(tmp)  # the pipeline's own validation, before the rename
        if len(samples) != len(chosen):
            raise DataError(f"{out}: {len(chosen)} items written but {len(samples)} load back (duplicates?)")
    with atomic_path(out.with_suffix(".unlabeled.json")) as tmp:  # bench/pseudo_label.py's input
        tmp.write_text(json.dumps({"items": unlabeled}, ensure_ascii=False))
    if gr != "none":
        report["real_traces"]["staged"] = stage_traces(Path(gr), chosen, out.parent / "gr_predictions")
    if not a.no_dev:
        report["dev_sets"] = {"folder": str(out.parent / "dev"), "files": stage_dev(d, out.parent / "dev")}
    write_json(out.with_suffix(".counts.json"), report)
    print(json.dumps({k: report[k] for k in ("selected", "lexicon_check")} |
                     {"real_traces": report["real_traces"]["selected"]}, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {out.with_suffix('.counts.json')}")


if __name__ == "__main__":
    main()
