"""Run folders that cannot lie: one writer per folder, tiles verified (not trusted), files
written whole or not at all, damaged side files named, names checked where they enter and
folders that stay folders. Faults are made for real: racing processes, deleted and flipped
chunk bytes, a full disk under ``ulimit -f``, truncated and hostile files."""

# --- one writer (lock) ---

# --- end one writer ---

# --- verified tiles ---

# --- end verified tiles ---

# --- atomic files ---

# --- end atomic files ---

# --- damaged side files ---

# --- end damaged side files ---

# --- names and folders ---

# --- end names and folders ---
