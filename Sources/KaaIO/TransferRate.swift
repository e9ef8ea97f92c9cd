/// Milliseconds that `bytes` take to arrive at `bytesPerSecond`, rounded up: the time a size
/// read from the network earns under a minimum-rate deadline. Saturates at `UInt64.max`
/// instead of overflowing, whatever the size; a rate below 1 counts as 1.
func transferMilliseconds(_ bytes: Int, atRate bytesPerSecond: Int) -> UInt64 {
    guard bytes > 0 else { return 0 }
    let rate = UInt64(max(1, bytesPerSecond))
    let (whole, rest) = UInt64(bytes).quotientAndRemainder(dividingBy: rate)
    let (wholeMs, overflow) = whole.multipliedReportingOverflow(by: 1000)
    if overflow { return .max }
    // rest < rate, so rest * 1000 / rate < 1000 fits; the product itself may not fit in 64 bits.
    let product = rest.multipliedFullWidth(by: 1000)
    let (partMs, remainder) = rate.dividingFullWidth(product)
    return wholeMs.addingSaturated(partMs + (remainder > 0 ? 1 : 0))
}

extension UInt64 {
    /// `self + other`, or `UInt64.max` where that overflows (deadlines far in the future).
    func addingSaturated(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
