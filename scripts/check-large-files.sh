#!/usr/bin/env bash
# Fails when a file tracked by git (in the index) is larger than LIMIT bytes
# (default 1 MiB) outside a testdata/ directory: scratch images and other
# large data do not belong in the repository. Run inside a git work tree
# (make lint runs it at the root).
set -euo pipefail
limit=${LIMIT:-1048576}
big=$(git ls-files --format='%(objectname) %(path)' |
	git cat-file --batch-check='%(objectsize) %(rest)' |
	awk -v limit="$limit" '$1 > limit {
		path = substr($0, index($0, " ") + 1)
		if (path !~ /(^|\/)testdata\//) printf "  %s (%d bytes)\n", path, $1
	}')
if [ -n "$big" ]; then
	echo "check-large-files: tracked files over $limit bytes outside testdata/ (remove them, or move test data under testdata/):" >&2
	echo "$big" >&2
	exit 1
fi
