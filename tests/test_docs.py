"""The docs stay true: every ``rbseg`` command in README.md and docs/*.md parses, every shipped name
they mention exists, and the fooling rates docs/attacks.md quotes are the shipped files'.

Rules (kept simple on purpose):

- **Commands.** A *complete* command is an ``rbseg ...`` line of a fenced code block (line
  continuations ``\\`` joined; ``#`` comments, ``&&``/``;``/``|`` separated commands, ``env X=Y`` /
  ``time`` prefixes and ``torchrun ... -m robustbench_seg`` handled) or an inline code span that
  starts with ``rbseg``. It is run through ``build_parser().parse_args``, so an unknown subcommand or
  option fails; placeholders (DIR, ROOT, NAME, ...) are fine as values. An inline span is a fragment
  of prose, so options the parser requires and the span does not give are filled in first.
  A *synopsis* (a command holding ``[``, ``]``, ``<``, ``>``, ``(``, ``)``, ``...`` or ``a|b``
  alternatives) cannot be parsed as such: its subcommands (each alternative) must exist, each
  ``--option`` it names must be an option of that subcommand, and each value alternative of an
  option with fixed choices must be one of them.
- **Names.** Any word of the form ``uap-*``/``gduap-*`` (or with ``_``) is a shipped perturbation
  (``perturbations/*.npy``), an importer format, or a name the docs themselves create with
  ``--out`` (paths under ``benchmarks/`` are code, not names). Any word ``binding-*``/``segmix-*``
  and the ``--model``/``--source`` value of a command (unless a path, a ``module:function`` or a
  placeholder) is a zoo model (``models/zoo.json``, a zoo recipe name, or a model a recipe trains,
  such as the GD-UAP source).
- **Fooling rates.** The generated table in docs/attacks.md equals what ``generated_table()``
  makes from the shipped ``perturbations/*.json`` (refresh it with ``python tests/test_docs.py
  --update``), and any other line there that names a shipped perturbation and quotes a fooling
  rate quotes that file's value.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PERTURBATIONS = ROOT / "perturbations"
ZOO_JSON = ROOT / "models" / "zoo.json"
ATTACKS_MD = ROOT / "docs" / "attacks.md"
BEGIN = "<!-- begin generated: shipped perturbations (python tests/test_docs.py --update) -->"
END = "<!-- end generated -->"

SYNOPSIS_MARKS = ("[", "]", "<", ">", "(", ")", "...", "…")
SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}
PREFIX_WORDS = {"env", "time", "/usr/bin/time", "-v", "exec", "$"}


# --- reading the docs ------------------------------------------------------------------------------

@dataclass
class DocCommand:
    file: str
    line: int
    text: str  # from "rbseg" on, as written (one line)
    inline: bool  # an inline code span (a prose fragment) rather than a code-block line

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def split_markdown(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(code-block lines, prose lines), each as (1-based line number, text)."""
    code, prose, fence = [], [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark.startswith(fence[0]) and len(mark) >= len(fence):
                fence = None
            continue
        (code if fence else prose).append((n, line))
    return code, prose


def join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for n, line in lines:
        if pending is not None:
            n0, acc = pending
            line, n = acc + " " + line.strip(), n0
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (n, line.rstrip()[:-1])
            continue
        out.append((n, line))
    if pending is not None:
        out.append(pending)
    return out


def inline_spans(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Inline code spans of prose (a span may run over lines of one paragraph)."""
    spans: list[tuple[int, str]] = []
    paragraph: list[tuple[int, str]] = []

    def flush():
        if not paragraph:
            return
        text = "\n".join(t for _, t in paragraph)
        for m in re.finditer(r"(`+)(.+?)\1", text, flags=re.S):
            line = paragraph[0][0] + text[: m.start()].count("\n")
            spans.append((line, " ".join(m.group(2).split())))
        paragraph.clear()

    for n, line in lines:
        if not line.strip():
            flush()
        else:
            paragraph.append((n, line))
    flush()
    return spans


def _shell_segments(line: str) -> list[str]:
    """The rbseg commands of one shell line, each from "rbseg" on (raw text, synopsis marks kept)."""
    out = []
    # split on separators with spaces around them (a synopsis writes alternatives as a|b)
    for seg in re.split(r"\s(?:&&|\|\||;|\||&)\s|;\s|&&", line):
        seg = seg.split(" #")[0].strip()
        if seg.startswith("#"):
            continue
        m = re.search(r"(?:^|\s)(rbseg|-m robustbench_seg)\s", seg + " ")
        if not m:
            continue
        before = seg[: m.start(1)].split()
        if before and before[0] in ("torchrun", "python", "python3") or m.group(1).startswith("-m"):
            pass  # torchrun ... -m robustbench_seg ARGS / python -m robustbench_seg ARGS
        elif not all(w in PREFIX_WORDS or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", w) for w in before):
            continue  # prose inside a code block (a file listing), not a command
        rest = seg[m.end(1):].strip()
        out.append("rbseg " + rest if rest else "rbseg")
    return out


def doc_commands() -> list[DocCommand]:
    cmds: list[DocCommand] = []
    for path in DOCS:
        rel = str(path.relative_to(ROOT))
        code, prose = split_markdown(path.read_text(encoding="utf-8"))
        for n, line in join_continuations(code):
            for text in _shell_segments(line):
                cmds.append(DocCommand(rel, n, text, inline=False))
        for n, span in inline_spans(prose):
            span = span.replace("\\|", "|")
            if span.startswith("rbseg ") or span == "rbseg":
                cmds.append(DocCommand(rel, n, span, inline=True))
            elif re.search(r"(?:^|\s)rbseg\s", span):
                cmds.extend(DocCommand(rel, n, t, inline=True) for t in _shell_segments(span))
    return cmds


# --- the parser tree --------------------------------------------------------------------------------

def _parser():
    from robustbench_seg.cli import build_parser

    return build_parser()


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def all_command_paths(parser=None, prefix=()) -> list[tuple[str, ...]]:
    parser = parser or _parser()
    paths = []
    for name, sub in subparsers_of(parser).items():
        paths.append((*prefix, name))
        paths.extend(all_command_paths(sub, (*prefix, name)))
    return paths


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return dict(parser._option_string_actions)


def is_synopsis(text: str) -> bool:
    return any(mark in text for mark in SYNOPSIS_MARKS) or bool(re.search(r"\S\|\S|\s\|\s", text))


def is_placeholder(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", value)) or value in ("options", "...")


def check_synopsis(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """Problems of a synopsis: unknown subcommands, unknown options, values outside an option's choices."""
    text = re.sub(r"<[^>]*>", "X", text)
    tokens = [t for t in re.sub(r"[\[\]()]", " ", text).split() if t not in ("|", "...", "…")]
    assert tokens[0] == "rbseg"
    parsers = [parser]
    k = 1
    problems = []
    while k < len(tokens) and subparsers_of(parsers[0]) and not tokens[k].startswith("-"):
        alternatives = [a for a in tokens[k].split("|") if a]
        if all(is_placeholder(a) for a in alternatives):
            break
        subs = subparsers_of(parsers[0])
        missing = [a for a in alternatives if a not in subs]
        if missing:
            return [f"unknown subcommand {', '.join(missing)} (known: {', '.join(subs)})"]
        parsers = [subs[a] for a in alternatives]
        k += 1
    for i in range(k, len(tokens)):
        tok = tokens[i]
        if not tok.startswith("--"):
            continue
        name, _, inline_value = tok.partition("=")
        owners = [p for p in parsers if name in option_actions(p)]
        if not owners:
            problems.append(f"unknown option {name}")
            continue
        action = option_actions(owners[0])[name]
        value = inline_value or (tokens[i + 1] if i + 1 < len(tokens) and action.nargs != 0 else "")
        if action.choices and value and not value.startswith("-"):
            bad = [v for v in value.split("|") if v and not is_placeholder(v) and v not in [str(c) for c in action.choices]]
            if bad:
                problems.append(f"{name} {'|'.join(bad)}: not among its choices {list(action.choices)}")
    return problems


def final_parser(parser: argparse.ArgumentParser, tokens: list[str]) -> argparse.ArgumentParser:
    for tok in tokens[1:]:
        subs = subparsers_of(parser)
        if tok in subs:
            parser = subs[tok]
        elif not tok.startswith("-") or not subs:
            break
    return parser


def fill_required(parser: argparse.ArgumentParser, tokens: list[str]) -> list[str]:
    """A prose fragment plus the required options it leaves out (placeholder values); a fragment
    ending in an option that takes a value (`rbseg predict --images`) gets a placeholder value."""
    given = {t.partition("=")[0] for t in tokens if t.startswith("-")}
    extra: list[str] = []
    last = option_actions(final_parser(parser, tokens)).get(tokens[-1]) if tokens[-1].startswith("--") else None
    if last is not None and last.nargs != 0:
        extra.append(str(next(iter(last.choices))) if last.choices else "X")
    for action in final_parser(parser, tokens)._actions:
        if action.required and action.option_strings and not given & set(action.option_strings):
            extra.append(action.option_strings[0])
            if action.nargs != 0:
                extra.append(str(next(iter(action.choices))) if action.choices else "X")
    return tokens + extra


def parse_problem(tokens: list[str]) -> str | None:
    """argparse's complaint about a complete command line, or None."""
    parser = _parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(tokens[1:])
    except SystemExit as exc:
        if exc.code != 0:
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {exc.code}"
    return None


def command_problems(cmd: DocCommand) -> list[str]:
    parser = _parser()
    if is_synopsis(cmd.text):
        return check_synopsis(parser, cmd.text)
    try:
        tokens = shlex.split(cmd.text)
    except ValueError as exc:  # an unbalanced quote
        return [f"cannot split into arguments: {exc}"]
    if cmd.inline:
        tokens = fill_required(parser, tokens)
    problem = parse_problem(tokens)
    return [problem] if problem else []


# --- names ------------------------------------------------------------------------------------------

def shipped_perturbations() -> set[str]:
    return {p.stem for p in PERTURBATIONS.glob("*.npy")}


def zoo_names() -> set[str]:
    """Shipped zoo models, zoo recipe names, and the extra models recipes train (the GD-UAP source, the
    IJCV Table 11 caps)."""
    from robustbench_seg.models.zoo import ZOO_NAMES
    from robustbench_seg.training import recipes

    shipped = set(json.loads(ZOO_JSON.read_text(encoding="utf-8")).get("models", {}))
    return shipped | set(ZOO_NAMES) | set(getattr(recipes, "RECIPES", {}))  # + GD-UAP source, IJCV Table 11 caps


def importer_formats() -> set[str]:
    from robustbench_seg.attacks.importers import IMPORTERS

    return set(IMPORTERS)


def created_by_docs(cmds: list[DocCommand]) -> set[str]:
    """Perturbation names the docs make themselves (``--out NAME`` of an import or a craft)."""
    names = set()
    for cmd in cmds:
        tokens = cmd.text.split()
        if len(tokens) > 2 and tokens[1] in ("perturbation", "craft") and "--out" in tokens:
            i = tokens.index("--out")
            if i + 1 < len(tokens):
                names.add(Path(tokens[i + 1]).stem)
    return names


PERT_WORD = re.compile(r"(?<![A-Za-z0-9])((?:gd)?uap[-_][A-Za-z0-9][A-Za-z0-9_-]*[A-Za-z0-9]|(?:gd)?uap[-_][A-Za-z0-9])")
MODEL_WORD = re.compile(r"(?<![A-Za-z0-9_/.-])((?:binding|segmix)-[a-z0-9][a-z0-9-]*[a-z0-9])(?![A-Za-z0-9_/-]|\.\w)")


def name_problems() -> list[str]:
    cmds = doc_commands()
    models = zoo_names()
    perts = shipped_perturbations() | importer_formats() | created_by_docs(cmds) | models  # gduap-source: a model
    problems = []
    for path in DOCS:
        rel = path.relative_to(ROOT)
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in PERT_WORD.finditer(line):
                token = re.search(r"[\w./~-]*$", line[: m.start()]).group(0) + m.group(1)
                if "benchmarks/" in token:
                    continue  # code (benchmarks/uap_vs_art.py), not a perturbation name
                if m.group(1) not in perts:
                    problems.append(f"{rel}:{n}: perturbation '{m.group(1)}' is not shipped "
                                    f"(shipped: {', '.join(sorted(shipped_perturbations()))})")
            for m in MODEL_WORD.finditer(line):
                if m.group(1) not in models:
                    problems.append(f"{rel}:{n}: model '{m.group(1)}' is not a zoo model")
    for cmd in cmds:
        tokens = cmd.text.split()
        for opt in ("--model", "--source"):
            for i, tok in enumerate(tokens[:-1]):
                if tok != opt:
                    continue
                for value in tokens[i + 1].split(","):
                    if (not value or is_placeholder(value) or re.search(r"[/:.<>|\[\]]", value)
                            or value.startswith("-")):
                        continue
                    if value not in models:
                        problems.append(f"{cmd.where}: {opt} {value} is not a zoo model")
    return problems


# --- fooling rates ----------------------------------------------------------------------------------

def _meta(name: str) -> dict:
    return json.loads((PERTURBATIONS / f"{name}.json").read_text(encoding="utf-8"))


def _rate(v) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def generated_table() -> str:
    """The docs/attacks.md table of the shipped perturbations, from their JSON sidecars."""
    rows = [
        "| name | Table 4 column | crafted on | iterations | fooling rate (measured on) | held-out fooling rate | crafting time |",
        "|---|---|---|---|---|---|---|",
    ]
    from robustbench_seg.attacks.recipes import SHIPPED

    shipped = shipped_perturbations()
    for name in [n for n in SHIPPED if n in shipped] + sorted(shipped - set(SHIPPED)):  # Table 4 order
        meta = _meta(name)
        src = meta.get("source_model") or {}
        metrics = src.get("metrics") or {}
        source = f"`{src.get('name', '?')}` ({src.get('arch', '?')}"
        if "val_acc" in metrics:
            source += f", accuracy train {metrics.get('train_acc', float('nan')):.2f} / val {metrics['val_acc']:.2f}"
        source += ")"
        unit = "passes" if meta.get("method") == "uap" else "iterations"
        held_out = "-"
        if meta.get("val_fooling_rate") is not None:
            held_out = f"{_rate(meta['val_fooling_rate'])} ({meta.get('val_fooling_rate_on', '?')})"
        time_s = meta.get("crafting_time_s")
        rows.append(
            f"| `{name}` | {meta.get('table4_column', '-')} | {source} | {meta.get('iterations', '-')} {unit} "
            f"| {_rate(meta.get('fooling_rate'))} ({meta.get('fooling_rate_on', '?')}) | {held_out} "
            f"| {'-' if time_s is None else f'{float(time_s):.1f} s'} |"
        )
    return "\n".join(rows)


def generated_block(text: str) -> tuple[int, int] | None:
    """(start, end) offsets of the text between the markers, or None when the markers are absent."""
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        return None
    return i + len(BEGIN), j


def update_attacks_md() -> bool:
    text = ATTACKS_MD.read_text(encoding="utf-8")
    span = generated_block(text)
    if span is None:
        raise SystemExit(f"{ATTACKS_MD}: markers {BEGIN!r} ... {END!r} not found")
    new = text[: span[0]] + "\n" + generated_table() + "\n" + text[span[1]:]
    if new != text:
        ATTACKS_MD.write_text(new, encoding="utf-8")
    return new != text


def quoted_rate_problems(text: str) -> list[str]:
    """Lines (outside the generated table) naming a shipped perturbation and quoting a fooling rate
    that is not one of that perturbation's recorded rates (at the digits shown)."""
    span = generated_block(text)
    if span is not None:
        text = text[: span[0]] + "\n" * text[span[0]: span[1]].count("\n") + text[span[1]:]
    shipped = shipped_perturbations()
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        named = [s for s in shipped if re.search(rf"`{re.escape(s)}`", line)]
        if not named:
            continue
        for m in re.finditer(r"fooling rates?", line, flags=re.I):
            quoted = line[m.end():].split("|")[0]
            for number in re.findall(r"(?<![\d.])(0\.\d+|1\.0+)(?![\d.])", quoted):
                digits = len(number.split(".")[1])
                recorded = [round(float(_meta(s)[k]), digits) for s in named
                            for k in ("fooling_rate", "val_fooling_rate") if _meta(s).get(k) is not None]
                if round(float(number), digits) not in recorded:
                    problems.append(f"docs/attacks.md:{n}: fooling rate {number} for {', '.join(named)}; "
                                    f"the shipped files record {recorded}")
    return problems


# --- tests ------------------------------------------------------------------------------------------

def test_docs_name_commands_and_the_rules_find_them():
    cmds = doc_commands()
    files = {c.file for c in cmds}
    assert "README.md" in files and "docs/evaluation.md" in files and "docs/attacks.md" in files
    texts = [c.text for c in cmds]
    assert "rbseg evaluate --model binding" in texts  # the README quick start (after "&&")
    assert any(t.startswith("rbseg train --method binding --data VOCdevkit/VOC2012 --split train_aug") and
               t.endswith("--weights-backbone /path/resnet101-63fe2227.pth") for t in texts)  # continuation
    assert any(t.startswith("rbseg train --method binding") and "--nproc" not in t and c.line
               for t, c in zip(texts, cmds) if "robustbench_seg" not in t)


def test_every_docs_command_parses():
    problems = [f"{c.where}: {p}" for c in doc_commands() for p in command_problems(c)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", all_command_paths(), ids=" ".join)
def test_help_of_every_command_and_subcommand(path, capsys):
    from robustbench_seg.cli import main

    with pytest.raises(SystemExit) as info:
        main([*path, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rbseg " + " ".join(path)), out[:200]


def test_every_command_has_a_help_test():
    paths = all_command_paths()
    assert ("data", "synth") in paths and ("reproduce",) in paths and ("perturbation", "show") in paths
    assert len(paths) >= 20


def test_readme_names_every_reproduce_preset():
    """The README's reproduce line offers every preset (micro: the smoke test) and runs the smoke test."""
    reproduce = subparsers_of(_parser())["reproduce"]
    presets = [str(c) for c in option_actions(reproduce)["--preset"].choices]
    lines = [c.text for c in doc_commands() if c.file == "README.md" and c.text.startswith("rbseg reproduce")]
    offered = {p for t in lines for m in re.finditer(r"--preset\s+(\S+)", t) for p in m.group(1).strip("[]").split("|")}
    assert set(presets) <= offered, f"README offers presets {sorted(offered)}, rbseg reproduce has {presets}"
    assert any(re.search(r"--preset micro\b", t) for t in lines)


def test_names_in_docs_exist():
    problems = name_problems()
    assert not problems, "\n".join(problems)


def test_attacks_md_generated_table_matches_shipped_files():
    text = ATTACKS_MD.read_text(encoding="utf-8")
    span = generated_block(text)
    assert span is not None, f"docs/attacks.md lacks the generated table markers {BEGIN!r} ... {END!r}"
    assert text[span[0]: span[1]].strip() == generated_table(), (
        "docs/attacks.md's table of shipped perturbations is stale: run `python tests/test_docs.py --update`")


def test_attacks_md_quotes_only_shipped_fooling_rates():
    problems = quoted_rate_problems(ATTACKS_MD.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


# --- the rules catch what they should (so the checks above cannot pass vacuously) ---------------------

def test_rules_reject_unknown_options_subcommands_and_choices():
    bad = [
        DocCommand("x.md", 1, "rbseg evaluate --model binding --no-such-option", inline=False),
        DocCommand("x.md", 1, "rbseg nosuchcommand --data ROOT", inline=False),
        DocCommand("x.md", 1, "rbseg data synth --out DIR --preset huge", inline=False),
        DocCommand("x.md", 1, "rbseg reproduce [--preset tiny|gigantic]", inline=True),
        DocCommand("x.md", 1, "rbseg craft uap|nosuch", inline=True),
        DocCommand("x.md", 1, "rbseg data check --data ROOT [--bogus]", inline=True),
    ]
    for cmd in bad:
        assert command_problems(cmd), cmd.text
    good = [
        DocCommand("x.md", 1, "rbseg evaluate --split ooc", inline=True),  # --model filled in
        DocCommand("x.md", 1, "rbseg data synth --out DIR [--preset tiny|small|large] [--seed N]", inline=True),
        DocCommand("x.md", 1, "rbseg perturbation import|show|list", inline=True),
    ]
    for cmd in good:
        assert command_problems(cmd) == [], cmd.text


def test_rules_find_stale_names_and_rates(monkeypatch):
    text = "rbseg evaluate --model binding --perturbations uap_resnet152,gduap_r_all"
    assert [m.group(1) for m in PERT_WORD.finditer(text)] == ["uap_resnet152", "gduap_r_all"]
    assert not set(m.group(1) for m in PERT_WORD.finditer(text)) & shipped_perturbations()
    assert [m.group(1) for m in MODEL_WORD.finditer("`binding-wrfb`, models/binding-rfb.pt, binding-nope")] == [
        "binding-wrfb", "binding-nope"]
    name = sorted(shipped_perturbations())[0]
    rate = _meta(name)["fooling_rate"]
    wrong = 0.5 if abs(rate - 0.5) > 0.01 else 0.25
    assert quoted_rate_problems(f"| `{name}` (x) | fooling rate {wrong:.3f} (crafting set) | 10 s |\n")
    assert not quoted_rate_problems(f"| `{name}` (x) | fooling rate {rate:.3f} (crafting set) | 10 s |\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        print("docs/attacks.md " + ("updated" if update_attacks_md() else "already current"))
    else:
        print(generated_table())
