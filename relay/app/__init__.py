"""What user interfaces share: a room session (snapshot and actions), voice sources and the
local control socket. No user-interface toolkit is imported here: the terminal console, the
`relay mod` command and a browser gateway build on the same calls."""
