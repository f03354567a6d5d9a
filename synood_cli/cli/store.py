"""`synood store ls|show|rm|gc|verify|export`: look at and manage the artifact store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from synood_cli.cli.render import err_console, error_boundary, esc, warn_line

app = typer.Typer(help="Inspect and manage the artifact store (ids, names, manifests).", no_args_is_help=True, rich_markup_mode="rich")


def _store(ctx: typer.Context):
    from synood_cli.store import Store

    return Store(ctx.obj.home)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


CACHE_KINDS = ("features", "text-features", "weights")  # rebuilt on demand; listed with --all or --kind


def _short_time(created: str) -> str:
    """`2026-12-01T17:59:24+00:00` -> `2026-12-01 17:59` (UTC as recorded): short enough to never be cut."""
    return created[:16].replace("T", " ") if created else ""


@app.command("ls", epilog="[bold]Examples[/bold]\n\n  synood store ls\n\n  synood store ls --all\n\n  synood store ls --kind negatives --format json")
@error_boundary
def ls(
    ctx: typer.Context,
    kind: Optional[str] = typer.Option(None, "--kind", help="Only this kind (weights, text-features, negatives, dataset, ...)."),
    show_all: bool = typer.Option(False, "--all", "-a", help="Also list cache artifacts (features, text-features, weights) in the table; JSON lists everything."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, or json (one JSON object per line).", metavar="table|json"),
    old_json: bool = typer.Option(False, "--json", hidden=True, help="Deprecated spelling of --format json."),
) -> None:
    """List artifacts: kind, id, names, status, size, creation time (UTC). Cache artifacts only with --all."""
    from rich.table import Table

    from synood_cli.cli.flags import check_text_format
    from synood_cli.cli.tables import wide_console

    as_json = check_text_format(fmt, old_json) == "json"
    store = _store(ctx)
    rows = [_ls_row(a) for a in store.list(kind)]
    # machines get every artifact; people get what they made (caches rebuild themselves)
    hidden = [] if (show_all or kind or as_json) else [r for r in rows if r["kind"] in CACHE_KINDS and r["status"] != "damaged"]
    rows = [r for r in rows if r not in hidden]
    if as_json:
        for r in rows:
            print(json.dumps(r))
    elif rows:
        # ids, names and dates are what people copy: never cut them; in a narrow terminal names wrap
        t = Table(title=f"store {esc(store.root)}", title_justify="left")
        t.add_column("kind", no_wrap=True)
        t.add_column("id", no_wrap=True, min_width=16)
        t.add_column("names", overflow="fold", min_width=8)
        with_status = any(r["status"] != "complete" for r in rows)
        if with_status:
            t.add_column("status", no_wrap=True)
        t.add_column("size", justify="right", no_wrap=True)
        t.add_column("created (UTC)", no_wrap=True, min_width=16)
        for r in rows:
            status = [r["status"]] if with_status else []
            t.add_row(*(esc(x) for x in (r["kind"], r["id"], ", ".join(r["names"]), *status, _human(r["size"]), _short_time(r["created"] or ""))))
        wide_console().print(t)  # not cut to 80 columns in a pipe
        for r in rows:
            if r["status"] == "damaged":
                warn_line(f"{r['kind']}/{r['id']}: {r['problem']} (remove it with: synood store rm {r['kind']}/{r['id']})")
    if not rows and not as_json:
        err_console.print(f"the store at {esc(store.root)} is empty" if not hidden else f"the store at {esc(store.root)} holds only cache artifacts")
    if hidden and not as_json:
        kinds = ", ".join(sorted({r["kind"] for r in hidden}))
        err_console.print(f"{len(hidden)} cache artifact(s) not listed ({kinds}); --all lists them", soft_wrap=True, markup=False)


def _ls_row(a) -> dict:
    """One artifact's listing; a manifest that cannot be read lists it as damaged instead of failing."""
    from synood_cli.errors import DamagedArtifact

    try:
        m = a.manifest
        return {"kind": a.kind, "id": a.id, "names": a.names(), "status": m.get("status", "?"), "size": a.size_bytes(), "created": m.get("created")}
    except DamagedArtifact as e:
        from synood_cli.store import payload_files

        size = sum(p.stat().st_size for p in payload_files(a.path))  # never follows a link
        return {"kind": a.kind, "id": a.id, "names": a.names(), "status": "damaged", "size": size, "created": None, "problem": e.message}


@app.command("show", epilog="[bold]Examples[/bold]\n\n  synood store show demo-data\n\n  synood store show 3f2a --format json")
@error_boundary
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Name, kind/id, id or a unique id prefix."),
    fmt: str = typer.Option("text", "--format", "-f", help="text, or json (the whole manifest).", metavar="text|json"),
    old_json: bool = typer.Option(False, "--json", hidden=True, help="Deprecated spelling of --format json."),
) -> None:
    """Show one artifact's manifest: config, inputs, summary and files."""
    from synood_cli.cli.flags import check_text_format

    from synood_cli.store import recorded_size

    as_json = check_text_format(fmt, old_json, ("text", "json")) == "json"
    art = _store(ctx).find(ref)
    m = art.manifest
    problems = art.problems()  # invalid entries (`..`, `/abs`, links) and missing files: stat only, nothing read
    if as_json:
        print(json.dumps({**m, "names": art.names(), "path": str(art.path), "problems": problems}, indent=2, default=str))
        return
    status = m.get("status") if not problems else "damaged"
    print(f"{art.kind}/{art.id}  status={status}  names={', '.join(art.names()) or '-'}")
    print(f"path: {art.path}")
    print(f"created: {m.get('created')}  synood {m.get('synood_version')}")
    for section in ("summary", "config", "inputs"):
        if isinstance(m.get(section), dict) and m[section]:
            print(f"{section}:")
            for k, v in m[section].items():
                print(f"  {k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    files = m.get("files") or {}
    print(f"files: {len(files)} ({_human(sum(recorded_size(f) for f in files.values()))})")
    for rel, f in list(files.items())[:20]:
        digest = f.get("sha256") if isinstance(f, dict) else None
        print(f"  {rel}  {_human(recorded_size(f))}  sha256:{str(digest)[:12]}")
    if len(files) > 20:
        print(f"  ... {len(files) - 20} more")
    for problem in problems:
        warn_line(f"{art.ref}: {problem} (check it with: synood store verify {art.ref})")


@app.command("rm", epilog="[bold]Example[/bold]\n\n  synood store rm demo-data 3f2a")
@error_boundary
def rm(
    ctx: typer.Context,
    refs: List[str] = typer.Argument(..., help="Artifacts to remove (names, ids or prefixes)."),
    force: bool = typer.Option(False, "--force", help="Remove even an artifact another process is writing (that process then fails)."),
) -> None:
    """Remove artifacts and the names that point at them; one being written is refused without --force."""
    store = _store(ctx)
    arts = [store.find(r) for r in refs]  # resolve all first: nothing is removed if one is unknown
    if not force:
        for a in arts:
            holder = store.holder(a)
            if holder is not None:
                from synood_cli.errors import StoreBusy

                raise StoreBusy(holder, hint="wait for that run to finish, or pass --force to remove it anyway (that run then fails)")
    for a in arts:
        store.remove(a, force=force)
        err_console.print(f"removed {esc(a.ref)}")


@app.command("gc", epilog="[bold]Examples[/bold]\n\n  synood store gc --dry-run\n\n  synood store gc --partial")
@error_boundary
def gc(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only list what would be removed."),
    partial: bool = typer.Option(False, "--partial", help="Also remove unfinished artifacts (their work is lost)."),
    force: bool = typer.Option(False, "--force", help="With --partial, also remove unfinished artifacts another process is writing."),
) -> None:
    """Remove temp folders of crashed writes, dangling names and (with --partial) unfinished artifacts.

    Unfinished artifacts that another process is writing are kept (exit 2, naming the process)
    unless --force. Artifacts whose manifest is damaged are listed, never removed: use `store rm`.
    """
    busy, damaged, links = [], [], []
    removed = _store(ctx).gc(dry_run=dry_run, partial=partial, force=force, busy=busy, damaged=damaged, links=links)
    for p in removed:
        print(p)
    err_console.print(f"{'would remove' if dry_run else 'removed'} {len(removed)} item(s)")
    for path, target in links:
        warn_line(f"{path} is a link (to {target}); not followed, not removed (remove the link yourself if you did not put it there)")
    for art, problem in damaged:
        warn_line(problem if problem.startswith("the lock file") else f"{problem} (remove it with: synood store rm {art.ref})")
    if busy:
        from synood_cli.errors import StoreBusy

        for art, holder in busy[1:]:
            warn_line(f"kept {holder}")
        raise StoreBusy(f"kept {busy[0][1]}", hint="wait for that run to finish, or add --force to remove it anyway (that run then fails)")


@app.command("verify", epilog="[bold]Examples[/bold]\n\n  synood store verify\n\n  synood store verify near-0-100")
@error_boundary
def verify(ctx: typer.Context, ref: Optional[str] = typer.Argument(None, help="One artifact (name, kind/id, id or prefix) \\[default: all].")) -> None:
    """Check every file of complete artifacts against the sha256 and size in their manifest.

    Prints one line per artifact on stdout (`ok`, `partial` or `damaged: ...`); exit 3 if any is damaged.
    """
    from synood_cli.errors import DamagedArtifact

    from synood_cli.store import recorded_size

    store = _store(ctx)
    links: list = []
    arts = [store.find(ref)] if ref else store.list(links=links)
    reporter = ctx.obj.reporter()
    sizes = []
    for a in arts:
        try:
            sizes.append(sum(recorded_size(f) for f in (a.manifest.get("files") or {}).values()) if a.complete else 0)
        except DamagedArtifact:
            sizes.append(0)
    damaged = []
    for path, target in links:  # never followed: a link in place of a kind or artifact folder is reported
        damaged.append(path)
        print(f"{path.relative_to(store.artifacts).as_posix()}\tdamaged\ta link (to {target}); not followed")
    problems_of: dict[str, list[str]] = {}
    with reporter.task("verifying", total=sum(sizes) or None, unit="B") as task:
        for a in arts:
            try:
                status = a.status
                problems = a.problems(hashes=True, progress=task.advance) if status == "complete" else []
            except DamagedArtifact as e:
                status, problems = "damaged", [e.message.split(": ", 1)[-1]]
            if problems:
                damaged.append(a)
                problems_of[a.ref] = problems
                print(f"{a.ref}\tdamaged\t{'; '.join(problems)}")
            else:
                print(f"{a.ref}\t{'ok' if status == 'complete' else status}")
    if damaged:
        from synood_cli.errors import DamagedArtifact as Damaged

        first = damaged[0]
        refs = [a.ref if not isinstance(a, Path) else str(a) for a in damaged]
        if isinstance(first, Path):
            hint = f"remove the link yourself if you did not put it there: rm {first}"
        elif len(damaged) == 1:
            hint = first.repair_hint(problems_of[first.ref])
        else:
            hint = "rerun the commands that made them (they redo only what is missing), or remove them with: synood store rm REF"
        raise Damaged(f"{len(damaged)} of {len(arts) + len(links)} artifact(s) damaged: {', '.join(refs[:5])}", hint=hint)
    err_console.print(f"{len(arts)} artifact(s) verified")


@app.command(
    "export",
    epilog="[bold]Examples[/bold]\n\n  synood store export near-0-100 --to near-folder/\n\n"
    "  synood store export near-0-100 --to-parquet near-parquet/\n\n  synood store export near-0-100 --to-hub ORG/synood-near-ood --private",
)
@error_boundary
def export(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="A synth artifact (name or id)."),
    to: Optional[str] = typer.Option(None, "--to", help="Folder for an ImageFolder tree of PNGs (<class name>/<image>.png)."),
    to_parquet: Optional[str] = typer.Option(None, "--to-parquet", help="Folder for the Parquet shards (one table; load with datasets or any Parquet reader)."),
    to_hub: Optional[str] = typer.Option(None, "--to-hub", help="Hugging Face dataset repo (ORG/NAME) to push to, with your own token."),
    private: bool = typer.Option(False, "--private", help="With --to-hub, create the repo private."),
) -> None:
    """Export synthesized images: an ImageFolder tree, Parquet files, or a Hugging Face dataset."""
    from pathlib import Path

    from synood_cli.data import shards as shard_io
    from synood_cli.errors import UsageError

    targets = [t for t in (to, to_parquet, to_hub) if t]
    if len(targets) != 1:
        raise UsageError("give exactly one of --to DIR, --to-parquet DIR, --to-hub REPO")
    if to_hub and to_hub.count("/") != 1:
        raise UsageError(f"--to-hub takes ORG/NAME, got {to_hub!r}")
    art = _store(ctx).find(ref)
    if art.kind != "synth":
        raise UsageError(f"{ref!r} is a {art.kind} artifact; only synth artifacts hold images to export")
    art.check()  # a missing or truncated shard is exit 3, never a silently smaller export
    shards = sorted(art.path.glob("shards/*.parquet"))
    if not shards:
        raise UsageError(f"{art.ref} has no finished shard yet", hint="run (or resume) `synood synthesize` first")
    if not art.complete:
        warn_line(f"{art.ref} is partial; exporting its {len(shards)} complete shards")
    if to:
        n = shard_io.export_image_folder(shards, Path(to))
    elif to_parquet:
        n = shard_io.export_parquet(shards, Path(to_parquet))
    else:
        n = shard_io.push_to_hub(shards, to_hub, private)
    err_console.print(f"exported {n} images from {esc(art.ref)} to {esc(targets[0])}")
