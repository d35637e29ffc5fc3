// Timers from `timer.measure` are a plain kind (`ResourceKind.timer`): their whole state
// is in the handle record (start time, label index in `aux`), so acquiring one allocates no Swift
// object. On release the elapsed time goes to the ledger under the label
// (`Runtime.closePlain`); `:elapsed()` reads it back from the record (or its tomb).
