"""Stage `core` (the bottom layer): where things live (paths), what machine this is (hardware), the named profiles,
and the run folder's records (results). It imports no other stage."""
