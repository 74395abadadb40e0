"""Chat templates rendered within budgets: the model repository's own Jinja code, run in transformers' sandbox --
which stops attribute tricks but neither loops (nested ``range(100000)`` loops run for hours) nor sizes
(``'x' * 10**12``). :func:`render_chat_template` renders it in the same sandbox with budgets: Python lines run by the
template's code (every loop iteration and macro call runs some), characters of output, and the size of every value
the template's operators, calls and filters make, checked before the big ones are built. Its output equals
``tokenizer.apply_chat_template(..., tokenize=False)`` for every template that stays within them.
"""

from __future__ import annotations

import re

CHAT_TEMPLATE_STEPS = 1_000_000  # real templates run a few thousand lines; this many takes a second or two
CHAT_TEMPLATE_CHARS = 1 << 22  # output and any one value, beyond 4x the messages' own length
CHAT_TEMPLATE_WORK = 1 << 28  # the sizes of all values made and read, beyond 64x the messages' length
CHAT_TEMPLATE_INT_BITS = 1 << 16  # numbers: a template counts and indexes, it needs no 20,000-digit ones
CHAT_TEMPLATE_INDENT = 64  # tojson(indent=N): templates use 2 or 4


class TemplateBudgetError(Exception):
    """A chat template went past a rendering budget (the message says which); not a LenskitError: chat_prompt turns it
    into one."""


def _size(x, depth: int = 0) -> int:
    """Characters (items) in ``x``, its items' included: what printing it would make (``[s] * 1000`` is 1000 of
    ``s``). Numbers and other objects count 0."""
    if isinstance(x, (str, bytes, range)):
        return len(x)
    if depth > 32:
        return 0
    if isinstance(x, (list, tuple, set, frozenset)):
        return len(x) + sum(_size(i, depth + 1) for i in x)
    if isinstance(x, dict):
        return len(x) + sum(_size(k, depth + 1) + _size(v, depth + 1) for k, v in x.items())
    return 0


def _bounded_environment(env, limit: int, work: int):
    """Arm Jinja sandbox ``env`` (a fresh one) with ``limit`` on every value its operators, calls, filters and blocks
    make, and ``work`` on the sum of all their sizes, their inputs' included (a loop that copies a long string once per
    step is quadratic)."""
    import functools

    done = [0]

    def refuse(what):
        raise TemplateBudgetError(f"makes {what} larger than {limit} characters")

    def spend(n):
        done[0] += n
        if done[0] > work:
            raise TemplateBudgetError(f"does more work than {work} characters' worth (its loops over long text)")

    def widths(fmt):  # widths and precisions written into a format string: '{:>999999999}', '%999999999s'
        if isinstance(fmt, str) and any(int(d) > limit for d in re.findall(r"\d{7,}", fmt)):
            refuse("a formatted string")

    def predicted(name, args, kwargs):
        """Refuse a call whose result would be too large, before it runs: ints past ``limit`` (widths, counts), and
        the calls whose result is a product of their arguments' sizes."""
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > limit:
                shown = f"the number {a}" if abs(a) < 1 << 64 else "a huge number"
                refuse(f"a value ({shown} given to {name or 'a call'})")
        strs = [a for a in args if isinstance(a, str)]
        if name == "replace" and len(strs) >= 3:  # s.replace(old, new) and s|replace(old, new)
            s, old, new = strs[:3]
            if len(s) + (s.count(old) if old else len(s) + 1) * max(0, len(new) - len(old)) > limit:
                refuse("a string (replace)")
        elif name == "join":
            items = next((a for a in args if isinstance(a, (list, tuple))), None)
            sep = next((a for a in args if isinstance(a, str)), "")
            if items is not None and sum(_size(i) or 8 for i in items) + len(sep) * len(items) > limit:
                refuse("a string (join)")
        elif name in ("indent", "expandtabs"):  # each line (tab) of the string gets a width's worth
            s = strs[0] if strs else ""
            per = max([a for a in args if isinstance(a, int) and not isinstance(a, bool)] +
                      [_size(a) for a in strs[1:]] + [_size(v) for v in kwargs.values()] + [8])
            if (s.count("\n" if name == "indent" else "\t") + 1) * (per + 1) > limit:
                refuse(f"a string ({name})")
        elif name == "wordwrap":  # a wrap string at most once per character
            s = strs[0] if strs else ""
            if (len(s) + 1) * (max([_size(a) for a in strs[1:]] + [_size(v) for v in kwargs.values()] + [1])) > limit:
                refuse("a string (wordwrap)")
        elif name == "translate":
            table = next((a for a in args if isinstance(a, dict)), {})
            longest = max((_size(v) for v in table.values()), default=1)
            if strs and len(strs[0]) * max(1, longest) > limit:
                refuse("a string (translate)")
        elif name in ("format", "format_map"):
            for a in strs:
                widths(a)
        elif name == "tojson":
            indent = kwargs.get("indent", args[2] if len(args) > 2 else None)
            if isinstance(indent, str) and len(indent) > CHAT_TEMPLATE_INDENT or (
                    isinstance(indent, int) and indent > CHAT_TEMPLATE_INDENT):
                refuse("a JSON string (tojson indent)")

    def checked(result, name, inputs=0):
        size = _size(result)
        if size > limit:
            refuse(f"a value ({name or 'a call'})")
        spend(size + inputs)
        return result

    def guard(name, func):
        @functools.wraps(func)  # keeps jinja's pass_context / pass_environment marks
        def wrapper(*args, **kwargs):
            predicted(name, args, kwargs)
            inputs = sum(map(_size, args)) + sum(map(_size, kwargs.values()))
            return checked(func(*args, **kwargs), name, inputs)

        return wrapper

    env.filters = {name: guard(name, f) for name, f in env.filters.items()}
    sandbox_call = env.call

    def call(context, obj, *args, **kwargs):
        target = getattr(obj, "__wrapped__", obj)
        name = getattr(target, "__name__", None)
        name = "range" if name == "safe_range" else name  # the sandbox's range, as the template calls it
        owner = getattr(target, "__self__", None)
        shown = {k: v for k, v in kwargs.items() if not k.startswith("_")}  # _loop_vars, _block_vars: jinja's own
        given = ((owner,) if isinstance(owner, str) else ()) + args
        predicted(name, given, shown)
        inputs = sum(map(_size, given)) + sum(map(_size, shown.values()))
        return checked(sandbox_call(context, obj, *args, **kwargs), name, inputs)

    env.call = call
    env.intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(context, op, left, right):
        if op == "*":
            if isinstance(left, int) and isinstance(right, int) and \
                    abs(left).bit_length() + abs(right).bit_length() > CHAT_TEMPLATE_INT_BITS:
                refuse("a number (*)")
            for a, b in ((left, right), (right, left)):
                if isinstance(b, int) and not isinstance(b, bool) and _size(a) * max(b, 0) > limit:
                    refuse("a value (*)")
        elif op == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0 \
                    and right * abs(left).bit_length() > CHAT_TEMPLATE_INT_BITS:
                refuse("a number (**)")
        elif op == "+":
            if _size(left) + _size(right) > limit:
                refuse("a value (+)")
        elif op == "%" and isinstance(left, str):
            widths(left)
        return checked(env.binop_table[op](left, right), op, _size(left) + _size(right))

    env.call_binop = call_binop

    def concat(parts):  # the text of a block: {% set x %}...{% endset %}, a macro's, a call or filter block's
        parts = list(parts)
        if sum(map(len, parts)) > limit:
            refuse("a block of text")
        return checked("".join(parts), "a block")

    env.concat = concat

    def joined(original):  # `a ~ b ~ c`: its parts' size is known before they are joined
        def join(seq):
            parts = [p if isinstance(p, str) else str(p) for p in seq]
            if sum(map(len, parts)) > limit:
                refuse("a value (~)")
            return checked(original(parts), "~")

        return join

    return joined


def render_chat_template(tokenizer, messages: list, add_generation_prompt: bool = True) -> str:
    """What ``tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`` gives, rendered in
    the same sandbox (transformers' own template environment) within lenskit's budgets: TemplateBudgetError when the
    template runs too long or makes too much text. Another transformers without that environment: its own
    apply_chat_template, unbounded."""
    import sys

    try:
        from transformers.utils import chat_template_utils
    except ImportError:  # pragma: no cover -- another transformers
        chat_template_utils = None
    fresh_template = getattr(chat_template_utils, "_cached_compile_jinja_template", None)  # uncached: a new environment
    if fresh_template is None:  # pragma: no cover -- another transformers
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    source = tokenizer.get_chat_template()
    given = sum(len(m["content"]) for m in messages)
    limit, work = CHAT_TEMPLATE_CHARS + 4 * given, CHAT_TEMPLATE_WORK + 64 * given
    # a fresh environment, ours alone; the template is compiled only once it is armed: compiling folds constant
    # expressions (`'x' * 10**9` would be built right there), and the intercepted operators are compiled in
    env = fresh_template("").environment
    joined = _bounded_environment(env, limit, work)
    template = env.from_string(source)
    namespace = template.root_render_func.__globals__  # the template module's own: `~` joins through these
    for name in ("str_join", "markup_join"):
        if name in namespace:
            namespace[name] = joined(namespace[name])
    steps = [0]
    filename = template.root_render_func.__code__.co_filename

    def line(frame, event, arg):
        if event == "line":
            steps[0] += 1
            if steps[0] > CHAT_TEMPLATE_STEPS:
                raise TemplateBudgetError(f"runs longer than {CHAT_TEMPLATE_STEPS} steps (its loops)")
        return line

    def tracer(frame, event, arg):  # only the template's own code is counted, line by line
        return line if frame.f_code.co_filename == filename else None

    kwargs = dict(tokenizer.special_tokens_map, messages=messages, tools=None, documents=None,
                  add_generation_prompt=add_generation_prompt)
    parts, total = [], 0
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        for part in template.generate(**kwargs):
            total += len(part)
            if total > limit:
                raise TemplateBudgetError(f"makes more than {limit} characters of text")
            parts.append(part)
    finally:
        sys.settrace(previous)
    return "".join(parts)
