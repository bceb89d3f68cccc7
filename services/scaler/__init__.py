"""The scaler: owns the set of workers (launch, restart, stop); later D2D weights and P/D roles."""
