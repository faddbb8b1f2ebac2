# Sourced (from the repository root) by the table scripts in sweeps/: the commit a table is made from, and
# the packages and machine that made it, for the provenance header of the table's Markdown.

# HEAD, with -dirty when tracked files outside results/ differ from it (a table script writes results/);
# "unknown" outside a git checkout.
git_state() {
    local head
    head="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
    if [[ -n "$(git status --porcelain --untracked-files=no -- . ':(exclude)results' 2>/dev/null)" ]]; then
        head+="-dirty"
    fi
    echo "$head"
}

# Exit 2 with one line unless commit $1 is clean: a table is made from a clean commit (ALLOW_DIRTY=1 allows a
# scratch table whose header names the dirty commit).
require_clean() {
    if [[ ( "$1" == *-dirty || "$1" == unknown ) && "${ALLOW_DIRTY:-0}" != 1 ]]; then
        echo "error: the working tree is not a clean git checkout ($1): a table is made from a clean commit;" \
            "commit first, or set ALLOW_DIRTY=1 for a scratch table whose header names the dirty commit" >&2
        exit 2
    fi
}

# 12 hex digits of commit $1, and -dirty if so: run folders are named by it, so a rerun at the same commit resumes.
commit_tag() {
    echo "${1:0:12}${1#"${1%-dirty}"}"
}

# "python X, torch Y, ...": the versions of the packages that compute a table.
packages_line() {
    python -c 'import importlib.metadata as m, platform
names = ("torch", "transformers", "peft", "lightning", "optuna")
print(", ".join([f"python {platform.python_version()}"] + [f"{p} {m.version(p)}" for p in names]))'
}

# "CPU model, N cores[, GPU name]; OS (kernel)": the machine that made a table.
machine_line() {
    local cpu gpu os
    cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
    os="$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") ($(uname -sr))"
    echo "$cpu, $(grep -c ^processor /proc/cpuinfo) cores${gpu:+, GPU $gpu}; $os"
}

# The header's "Made by one command" block for script $1: its command line with the QUICK and ALLOW_DIRTY it
# ran under and, first, the settings $2 (e.g. "MODEL=x TRAINER=gpu") where they differ from its defaults.
command_block() {
    local cmd="bash sweeps/$1" var
    for var in QUICK ALLOW_DIRTY; do [[ -z "${!var:-}" ]] || cmd="$var=${!var} $cmd"; done
    [[ -z "${2:-}" ]] || cmd="$2 $cmd"
    printf 'Made by one command from the repository root:\n\n```bash\n%s\n```\n\n' "$cmd"
}
