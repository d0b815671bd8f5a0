"""Export: TFLite conversion, the variants and the rule that picks the served one."""
