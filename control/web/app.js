// RTCPeerConnection
