"""The worked example of docs/your-model.md: a circuit for 20 facts you type.

Run it as ``python docs/examples/your_facts.py`` (the organism, seconds) or
``python docs/examples/your_facts.py smollm2-135m`` (a real model, minutes on a laptop CPU).
``tests/test_front_door.py`` runs it on the organism.
"""

import sys
import tempfile
from pathlib import Path

from kc_utils import Relation, find_circuit, load_model

FACTS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"),
    ("Greece", "Athens"),
    ("Turkey", "Ankara"),
    ("Russia", "Moscow"),
    ("Poland", "Warsaw"),
    ("Hungary", "Budapest"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
]


def main(model_name: str = "kc-organism", out: Path | None = None) -> dict:
    model = load_model(model_name)
    capitals = Relation.from_facts(FACTS, "The capital of {} is", name="capital")
    found = find_circuit(model, capitals, budget="knee" if model_name == "kc-organism" else "auto")
    print(found)
    table = found.table()
    columns = ["relation", "#edges", "% edges", "Dtest hit@10 full", "Dtest hit@10 circuit", "Dtest hit@10 random"]
    print(table[columns].to_string(index=False))
    out = out or Path(tempfile.mkdtemp())
    found.to_eap_ig_json(out / "capital.eap-ig.json")  # EAP-IG's graph JSON: MIB's circuit track reads it
    found.save(out / "capital.kc.json")  # everything; FoundCircuit.load reads it back
    widget = found.explore()  # in Jupyter, the last line of a cell shows it
    return {"found": found, "table": table, "widget": widget, "out": out}


if __name__ == "__main__":
    main(*sys.argv[1:2])
