"""CI gates: thresholds on the evaluated subject; every failed gate is listed, exit code 1 when any fails."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import quoteattr


@dataclass
class Gate:
    """One threshold.

    Attributes:
        name: the CLI flag (``max-forget-acc``).
        value: the threshold.
        actual: the measured value (None when the split was not evaluated).
        passed: whether it holds.
        detail: one line for humans.
    """

    name: str
    value: float
    actual: float | None
    passed: bool
    detail: str


def check_gates(subject: dict[str, dict], baseline: dict[str, dict] | None, *, max_forget_acc: float | None = None,
                max_retain_drop: float | None = None, min_retain_acc: float | None = None,
                max_forget_restricted_acc: float | None = None, max_mia_auc: float | None = None,
                mia: dict[str, dict] | None = None) -> list[Gate]:
    """Evaluate the requested gates on ``subject`` (split -> metrics), dropping relative to ``baseline``.

    Forget gates read test_forget, retain gates test_retain; ``max_mia_auc`` reads the strongest forget-side
    attack in ``mia`` (the subject's membership-inference results).
    """
    gates: list[Gate] = []

    def metric(split: str, key: str, source: dict[str, dict] | None) -> float | None:
        return None if source is None or split not in source else source[split].get(key)

    def add(name: str, value: float, actual: float | None, ok_if_le: bool, what: str) -> None:
        if actual is None:
            gates.append(Gate(name, value, None, False, f"{name}: {what} was not measured"))
            return
        ok = actual <= value if ok_if_le else actual >= value
        rel = "<=" if ok_if_le else ">="
        gates.append(Gate(name, value, actual, ok, f"{name}: {what} = {actual:.2f}, required {rel} {value:g}"))

    if max_forget_acc is not None:
        add("max-forget-acc", max_forget_acc, metric("test_forget", "accuracy", subject), True,
            "test_forget accuracy %")
    if max_forget_restricted_acc is not None:
        add("max-forget-restricted-acc", max_forget_restricted_acc,
            metric("test_forget", "restricted_accuracy", subject), True, "test_forget restricted accuracy %")
    if min_retain_acc is not None:
        add("min-retain-acc", min_retain_acc, metric("test_retain", "accuracy", subject), False,
            "test_retain accuracy %")
    if max_retain_drop is not None:
        base, have = metric("test_retain", "accuracy", baseline), metric("test_retain", "accuracy", subject)
        drop = None if base is None or have is None else base - have
        add("max-retain-drop", max_retain_drop, drop, True, "test_retain accuracy drop vs the model, points")
    if max_mia_auc is not None:
        forget = (mia or {}).get("forget")
        auc = None if not forget else max(a["auc"] for a in forget.values())
        add("max-mia-auc", max_mia_auc, auc, True, "forget membership-inference AUC (strongest attack)")
    return gates


def junit_xml(gates: list[Gate], suite: str = "spulctl.eval") -> str:
    """A JUnit XML document with one test case per gate (for CI test reporters)."""
    failures = sum(not g.passed for g in gates)
    cases = []
    for g in gates:
        body = "" if g.passed else f"<failure message={quoteattr(g.detail)}/>"
        cases.append(f'  <testcase classname="{suite}" name={quoteattr(g.name)}>{body}</testcase>')
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<testsuite name="{suite}" tests="{len(gates)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")
