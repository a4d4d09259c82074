"""Files of a workspace: safe paths, file operations, and unified-diff patches.

Owns every read and write of workspace files: ``paths`` (text checks and descriptor-relative I/O under a
root), the file operations re-exported here (tree, read, write, move, delete, all with ETag = sha256), and
``patches`` (parse, validate, all-or-nothing apply), and ``storage`` (the seam every user of workspace files
goes through: the files wherever their runtime keeps them; ``LocalStorage`` for a directory on this disk),
``remote`` and ``remote_storage`` (the same seam over a backend's primitives, deciding on the hub first).
"""

from app.services.files.operations import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_TREE_ENTRIES,
    DeleteResult,
    Entry,
    MoveResult,
    RawFile,
    TextFile,
    Tree,
    WriteResult,
    delete_path,
    file_identity,
    list_tree,
    move_path,
    read_raw,
    read_text,
    read_text_stat,
    stat_regular,
    write_file,
)

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_TREE_ENTRIES",
    "DeleteResult",
    "Entry",
    "MoveResult",
    "RawFile",
    "TextFile",
    "Tree",
    "WriteResult",
    "delete_path",
    "file_identity",
    "list_tree",
    "move_path",
    "patches",
    "paths",
    "read_raw",
    "read_text",
    "read_text_stat",
    "remote",
    "remote_storage",
    "stat_regular",
    "storage",
    "write_file",
]
