"""The one flag the hot path reads: is any budget in force (configured, or a session's with
``on_exceed="raise"``)? False until one is, so a process without budgets pays one attribute
read per call."""

armed = False
