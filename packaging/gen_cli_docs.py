"""Write the manual page ``outpost.1`` and the bash completion ``outpost.bash`` from the CLI.

Both are generated from the command tree behind ``outpost`` (typer builds it: click objects,
or typer's own fork of click in recent typer, hence the duck typing), so they list exactly the
commands and options the installed program has. Run with the interpreter of the environment
that has outpost installed:

    python packaging/gen_cli_docs.py --out DIR
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import inspect
import os
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer.main

from outpost.agent.cli import get_app

MAN_TAIL = r""".SH FILES
.TP
.I /etc/outpost/agent.toml
Agent configuration (root:outpost 0640). Check it with \fBoutpost config check\fR.
.TP
.I /etc/outpost/schedules/
Point schedules (CSV) referenced by \fB[schedules] files\fR.
.TP
.I /etc/outpost/outpost.env
Secrets of the agent service as environment variables (root 0600).
.TP
.I /etc/outpost/receiver.env
Secrets of the receiver service (DSN, admin token; root 0600).
.TP
.I /var/lib/outpost/
Buffer, alarm and mode state, and the local API socket \fIoutpost.sock\fR (group outpost).
.SH ENVIRONMENT
.TP
.B OUTPOST_CONFIG
Default for \fB\-\-config\fR.
.TP
.B OUTPOST_<SECTION>__<KEY>
Overrides any key of the agent configuration, e.g. \fBOUTPOST_CLOUD__URL\fR.
.SH NOTES
Members of group \fBoutpost\fR can use the commands that talk to the running agent
(status, points, alarms, writes): \fBadduser\fR \fIname\fR \fBoutpost\fR.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.exec\fR(5);
/usr/share/doc/outpost/README.md
"""


def roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def clean_help(text: str | None) -> str:
    if not text:
        return ""
    text = inspect.cleandoc(text).replace("\b\n", "")
    return re.sub(r"\[/?(bold|italic|dim|red|green|yellow|blue|cyan|magenta)\]", "", text)


def subcommands(cmd: Any, ctx: Any) -> list[str]:
    if not hasattr(cmd, "list_commands"):
        return []
    return [
        n for n in cmd.list_commands(ctx) if not getattr(cmd.get_command(ctx, n), "hidden", True)
    ]


def walk(cmd: Any, ctx: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    yield path, cmd, ctx
    for name in subcommands(cmd, ctx):
        sub = cmd.get_command(ctx, name)
        yield from walk(sub, sub.context_class(sub, info_name=name, parent=ctx), (*path, name))


def is_option(param: Any) -> bool:
    return hasattr(param, "is_flag")


def value_type(param: Any) -> Any:
    """The Python annotation of a parameter's value (list[X] gives X)."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if typing.get_origin(annotation) in (list, tuple):
        annotation = typing.get_args(annotation)[0]
    return annotation


def is_path(param: Any) -> bool:
    if value_type(param) is Path:
        return True
    return type(getattr(param, "type", None)).__name__ in ("Path", "File")


def choices_of(param: Any) -> list[str]:
    annotation = value_type(param)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [str(m.value) for m in annotation]
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return [str(c) for c in getattr(getattr(param, "type", None), "choices", None) or ()]


def option_rows(cmd: Any, ctx: Any) -> list[tuple[str, str]]:
    rows = []
    for param in cmd.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        if not is_option(param):
            help_text = clean_help(getattr(param, "help", None)) or help_text
        rows.append((names, help_text))
    return rows


def man_page(root: Any, ctx: Any) -> str:
    # SOURCE_DATE_EPOCH: reproducible builds (https://reproducible-builds.org/specs/source-date-epoch/)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    day = dt.datetime.fromtimestamp(int(epoch), dt.UTC).date() if epoch else dt.date.today()
    date = day.isoformat()
    out = [
        f'.TH OUTPOST 1 "{date}" "outpost" "User Commands"',
        ".SH NAME",
        "outpost \\- " + roff(clean_help(root.help).splitlines()[0].rstrip(".")),
        ".SH SYNOPSIS",
        ".B outpost",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        roff(clean_help(root.help)),
        ".PP",
        "Every command has \\fB\\-\\-help\\fR; the sections below repeat that help for each.",
        ".SH OPTIONS",
        *options(root, ctx),
        ".SH COMMANDS",
    ]
    for path, cmd, sub_ctx in walk(root, ctx, ("outpost",)):
        if cmd is root:
            continue
        usage = " ".join(cmd.collect_usage_pieces(sub_ctx))
        out.append(f'.SS "{roff(" ".join(path))} {roff(usage)}"')
        if cmd.help:
            out.append(roff(clean_help(cmd.help)))
        out += options(cmd, sub_ctx)
    out.append(MAN_TAIL)
    return "\n".join(out)


def options(cmd: Any, ctx: Any) -> list[str]:
    out = []
    for names, help_text in option_rows(cmd, ctx):
        if names != "--help":
            out += [".TP", f"\\fB{roff(names)}\\fR", roff(help_text)]
    return out


def bash_completion(root: Any, ctx: Any) -> str:
    cmds: dict[str, str] = {}
    opts: dict[str, str] = {}
    valued: dict[str, str] = {}
    files: dict[str, str] = {}
    choices: dict[str, str] = {}
    for path, cmd, sub_ctx in walk(root, ctx, ("outpost",)):
        key = " ".join(path)
        cmds[key] = " ".join(subcommands(cmd, sub_ctx))
        names: list[str] = []
        takes_value: list[str] = []
        path_values: list[str] = []
        for param in cmd.get_params(sub_ctx):
            if is_option(param):
                names += [*param.opts, *param.secondary_opts]
                if not param.is_flag and not param.count:
                    takes_value += param.opts
                    if is_path(param):
                        path_values += param.opts
                    if values := choices_of(param):
                        for flag in param.opts:
                            choices[f"{key} {flag}"] = " ".join(values)
            elif is_path(param):
                path_values.append("ARG")
        opts[key], valued[key], files[key] = (
            " ".join(x) for x in (names, takes_value, path_values)
        )

    def table(name: str, data: dict[str, str]) -> str:
        rows = "".join(f'    ["{k}"]="{v}"\n' for k, v in sorted(data.items()) if v)
        return f"declare -gA {name}=(\n{rows})\n"

    return (
        "# bash completion for outpost, generated from its command tree (packaging/gen_cli_docs.py)\n"
        + table("_outpost_cmds", cmds)
        + table("_outpost_opts", opts)
        + table("_outpost_valued", valued)
        + table("_outpost_files", files)
        + table("_outpost_choices", choices)
        + r"""
_outpost() {
    local cur prev path w i=1
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    path=outpost
    while [ "$i" -lt "$COMP_CWORD" ]; do
        w="${COMP_WORDS[i]}"
        if [[ " ${_outpost_valued[$path]} " == *" $w "* ]]; then
            i=$((i + 2))
            continue
        fi
        if [[ " ${_outpost_cmds[$path]} " == *" $w "* ]]; then
            path="$path $w"
        fi
        i=$((i + 1))
    done
    if [ -n "${_outpost_choices[$path $prev]}" ]; then
        mapfile -t COMPREPLY < <(compgen -W "${_outpost_choices[$path $prev]}" -- "$cur")
        return
    fi
    if [[ " ${_outpost_valued[$path]} " == *" $prev "* ]]; then
        if [[ " ${_outpost_files[$path]} " == *" $prev "* ]]; then
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        else
            COMPREPLY=()
        fi
        return
    fi
    if [[ "$cur" == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${_outpost_opts[$path]}" -- "$cur")
        return
    fi
    mapfile -t COMPREPLY < <(compgen -W "${_outpost_cmds[$path]}" -- "$cur")
    if [[ " ${_outpost_files[$path]} " == *" ARG "* ]]; then
        mapfile -t -O "${#COMPREPLY[@]}" COMPREPLY < <(compgen -f -- "$cur")
    fi
}
complete -o filenames -F _outpost outpost
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    root = typer.main.get_command(get_app())
    ctx = root.context_class(root, info_name="outpost")
    (args.out / "outpost.1").write_text(man_page(root, ctx) + "\n")
    (args.out / "outpost.bash").write_text(bash_completion(root, ctx))


if __name__ == "__main__":
    main()
