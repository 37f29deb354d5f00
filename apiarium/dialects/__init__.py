"""Client dialects: each translates its wire format to the internal chat request and back."""
