""" README.md and docs/: links resolve, the `timm-gct` commands shown parse, the set-up commands are the ones CI runs,
the README's model table is the registration table. """
import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import timm

from timm_gct.cli import _parser
from timm_gct.models import MECHANISMS, MODEL_MODULES

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]

_FENCE = re.compile(r'^```.*?^```', re.S | re.M)
_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
_INLINE_CODE = re.compile(r'`([^`]+)`')
_HEADING = re.compile(r'^#{1,6} +(.+?) *$', re.M)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _anchors(page: Path) -> Set[str]:
    seen: dict = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub('', page.read_text(encoding='utf-8'))):
        slug = _slug(heading)
        anchors.add(f'{slug}-{seen[slug]}' if slug in seen else slug)  # GitHub numbers repeated headings
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_the_docs_exist_and_the_readme_links_every_page():
    linked = {(ROOT / t.split('#')[0]).resolve() for t in _LINK.findall((ROOT / 'README.md').read_text())}
    pages = set(p.resolve() for p in PAGES[1:])
    assert len(pages) >= 10 and pages <= linked, sorted(_rel(p) for p in pages - linked)


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in PAGES:
        for target in _LINK.findall(_FENCE.sub('', page.read_text(encoding='utf-8'))):
            if re.match(r'[a-z]+:', target):  # https:, mailto:: not checked offline
                continue
            path, _, anchor = target.partition('#')
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f'{_rel(page)}: {target} (no such file)')
            elif anchor and (dest.suffix != '.md' or anchor not in _anchors(dest)):
                broken.append(f'{_rel(page)}: {target} (no heading with that anchor)')
    assert not broken, '\n'.join(broken)


def _shell_lines(block: str) -> Iterator[str]:
    """A code block's commands, continuation lines joined, prompts and comments dropped."""
    for line in block.replace('\\\n', ' ').splitlines():
        line = line.strip().removeprefix('$ ')
        if line and not line.startswith('#'):
            yield line


def _value(word: str) -> str:
    """A word of a synopsis as a value: brackets of an optional part dropped (`[--images DIR]`), and a metavar
    (`N`, `PATH`) replaced by 1, which every argument here accepts (`MODEL[.TAG]` is kept: a name)."""
    word = word[1:] if word.startswith('[') else word
    word = word[:-1] if word.endswith(']') and '[' not in word else word
    return '1' if re.fullmatch(r'[A-Z][A-Z_]*', word) else word


def _argv(command: str) -> List[str]:
    """`timm-gct ARGS` (or `.venv/bin/timm-gct`, `python -m timm_gct`) as its argv; [] when there are no ARGS."""
    words = shlex.split(command, comments=True)
    for start, word in enumerate(words):
        if word.endswith('timm-gct'):
            return [_value(w) for w in words[start + 1:]]
        if words[start:start + 2] == ['-m', 'timm_gct']:
            return [_value(w) for w in words[start + 2:]]
    return []


def _commands() -> List[Tuple[str, List[str], bool]]:
    """Every timm-gct command shown: where, its argv, and whether it is a whole command (in a code block) rather
    than one named in a sentence (`timm-gct card MODEL[.TAG]`), which may leave out required arguments."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding='utf-8')
        blocks = [line for block in _FENCE.findall(text) for line in _shell_lines(block.split('\n', 1)[1])]
        inline = [' '.join(code.split()) for code in _INLINE_CODE.findall(_FENCE.sub('', text))]
        for command, whole in [(c, True) for c in blocks] + [(c, False) for c in inline]:
            for part in re.split(r'&&|\|', command):
                if re.match(r'\s*(\S*timm-gct|python3? -m timm_gct)(\s|$)', part):
                    found.append((f'{_rel(page)}: {part.strip()}', _argv(part), whole))
    return found


def _parse_error(argv: List[str]) -> str:
    """argparse's complaint about argv, '' when it parses (or asks for --help); nothing runs."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _parser().parse_args(argv)
    except SystemExit as e:
        return err.getvalue().strip().splitlines()[-1] if e.code else ''
    return ''


def test_every_timm_gct_command_shown_parses():
    commands = _commands()
    assert len(commands) > 40  # README and docs show dozens; far fewer means the extraction broke
    bad = []
    for where, argv, whole in commands:
        error = _parse_error(argv)
        if error and (whole or 'the following arguments are required' not in error):
            bad.append(f'{where}\n    {error}')
    assert not bad, '\n'.join(bad)


def test_a_renamed_flag_or_subcommand_would_be_caught():
    assert 'unrecognized arguments: --no-officials' in _parse_error(_argv('timm-gct bench --no-officials'))
    assert 'invalid choice' in _parse_error(_argv('timm-gct benchmark'))
    assert _parse_error(_argv('timm-gct card MODEL[.TAG] [--output FILE]')) == ''


def test_the_readme_set_up_and_test_commands_are_what_ci_runs():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    ci = (ROOT / '.ci' / 'run').read_text().splitlines()
    for command in ('python3 -m venv .venv && .venv/bin/pip install -c .ci/constraints.txt -e ".[plot,test]" && '
                    '.venv/bin/timm-gct compare', '.venv/bin/python -m pytest'):
        assert f'```bash\n{command}\n```' in readme and command in ci


def test_the_readme_model_table_is_the_registration_table():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    rows = {m.group(1): [c.strip() for c in m.group(2).split(' | ')]
            for m in re.finditer(r'^\| `(\w+)`: (.+) \|$', readme, re.M)}
    assert set(rows) == set(MECHANISMS)
    for name, mechanism in MECHANISMS.items():
        _, imagenet, cifar, weights = rows[name]
        assert imagenet.split(';')[0] == ', '.join(map(str, mechanism.depths)), name
        assert cifar == ', '.join(map(str, mechanism.cifar_depths)), name
        assert ('identity warm start' in weights) == mechanism.identity_init, name
    assert f'{len(timm.list_models(module=MODEL_MODULES))} models' in readme
