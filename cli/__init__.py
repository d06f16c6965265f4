"""taskwire's command-line client (`taskwire run | get | ls | ask`)."""
