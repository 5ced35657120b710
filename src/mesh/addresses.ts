import type { Multiaddr } from '@multiformats/multiaddr'

/** True for 127.0.0.0/8 and ::1: never announced, or peers would dial themselves (PLATFORM.md). */
export function isLoopbackAddr(ma: Multiaddr): boolean {
  for (const c of ma.getComponents()) {
    if (c.name === 'ip4' && c.value?.startsWith('127.')) return true
    if (c.name === 'ip6' && (c.value === '::1' || c.value === '0:0:0:0:0:0:0:1')) return true
  }
  return false
}

export function withoutLoopback(addrs: Multiaddr[]): Multiaddr[] {
  return addrs.filter((ma) => !isLoopbackAddr(ma))
}

/** The peer id a multiaddr names with `/p2p/…`, if any. */
export function peerIdOfAddr(ma: Multiaddr): string | undefined {
  return ma.getComponents().find((c) => c.name === 'p2p')?.value
}

/** The IP address (ip4 or ip6) a multiaddr names, if any. */
export function ipOfAddr(ma: Multiaddr): string | undefined {
  return ma.getComponents().find((c) => c.name === 'ip4' || c.name === 'ip6')?.value
}
