"""Small guest programs: real x86 machine code with their assembly listings."""
