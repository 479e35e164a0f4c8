/// What a client connection holds for the API between requests: nothing, its long-poll
/// (reused for every wait on the connection), or its open event stream. One enum instead of
/// an `AnyObject` and casts: each case is handled where it matters, and a new kind (later: a
/// WebSocket) makes the compiler list every place that must learn it.
enum ConnectionAttachment {
    case none
    case longPoll(PendingRequest)
    case eventStream(EventStream)
    case webSocket(WebSocketStream)
    case gmcpPoll(GMCPWaiter)
}
