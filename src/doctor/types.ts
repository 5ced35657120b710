export type CheckLevel = 'ok' | 'warn' | 'fail'

export interface DoctorCheck {
  /** Stable identifier for scripts (`--json`), e.g. `netns`, `cgroup-controllers`. */
  id: string
  name: string
  level: CheckLevel
  /** One line: what was found. */
  detail: string
  /** Present when level is not 'ok': exactly what to install or enable. */
  fix?: string
}

export interface DoctorReport {
  checks: DoctorCheck[]
  /** True when no check failed (warnings allowed). */
  ok: boolean
}

export type CgroupLayout = 'v1' | 'hybrid' | 'v2'

export interface CgroupInfo {
  layout: CgroupLayout
  /** Controllers bound to cgroup v1 hierarchies (named hierarchies such as name=systemd are not controllers). */
  v1Controllers: string[]
  /** Controllers the cgroup2 hierarchy offers (its root cgroup.controllers); empty when not read. */
  v2Controllers: string[]
  /** Where cgroup2 is mounted (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`), or null. */
  v2Mount: string | null
  /** False when no cgroup filesystem is mounted at all; layout is then reported as 'v2' (what to mount). */
  mounted: boolean
}

/**
 * The outcome of one host probe, before it is judged. `skipped` means it could not run here
 * (not root, a prerequisite missing); `failed` carries the tool's own error line.
 */
export type Probe =
  | { status: 'ok'; info: string }
  | { status: 'failed'; error: string }
  | { status: 'skipped'; reason: SkipReason }

export type SkipReason = 'needs root' | 'no ip' | 'no namespace'

/** What differs between a stock Debian machine and a Raspberry Pi for the fixes we print. */
export interface HostFlavour {
  raspberryPi: boolean
  /** The Pi's kernel command line file: /boot/firmware/cmdline.txt (bookworm) or /boot/cmdline.txt (older). */
  cmdlinePath: string
  /** Debian architecture for kernel package names (amd64, arm64, armhf). */
  debArch: string
}
