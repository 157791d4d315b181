"""Reveal-and-Release: unlearning in rounds, one new orthogonal LoRA module per round (``--method release``).

* :mod:`.lora` — the module stack: the orthogonality penalty, stacking modules into one PEFT LoRA adapter, reading
  and writing that adapter (also what ``spulctl eval`` uses to load it as a subject).
* :mod:`.objective` — one round's loss: forget term (generic-label CE, gradient ascent or NPO) + retain terms +
  λ·penalty against the frozen earlier modules.
* :mod:`.rounds` — the loop: reveal from the current model, stop check, train a new module, freeze, stack.

The registered method lives in :mod:`spulctl.methods.release`; docs/release.md states the choices.
"""
