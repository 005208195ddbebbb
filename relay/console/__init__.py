"""The room console (`relay console`): a textual terminal UI over relay.app's room session."""
