// Pure: which kind of host this is, and the exact fix text for it (Debian, or Raspberry Pi OS where it differs).
import type { CgroupLayout, HostFlavour } from './types.ts'

export interface HostFacts {
  /** Text of /etc/os-release ('' when unreadable). */
  osRelease: string
  /** Text of /proc/device-tree/model ('' on machines without a device tree). */
  deviceTreeModel: string
  /** Whether /boot/firmware/cmdline.txt exists (Raspberry Pi OS bookworm and later). */
  firmwareCmdlineExists: boolean
  /** process.arch */
  arch: string
}

const DEB_ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'armhf', ia32: 'i386' }

export function detectHostFlavour(facts: HostFacts): HostFlavour {
  // 64-bit Raspberry Pi OS says ID=debian, so the board's model is the reliable sign.
  const raspberryPi =
    /raspberry pi/i.test(facts.deviceTreeModel) || /^ID="?raspbian"?$/m.test(facts.osRelease)
  const cmdlinePath =
    raspberryPi && !facts.firmwareCmdlineExists ? '/boot/cmdline.txt' : '/boot/firmware/cmdline.txt'
  return { raspberryPi, cmdlinePath, debArch: DEB_ARCH[facts.arch] ?? facts.arch }
}

/** The one way we tell people to install a Debian package (recommends pull in e.g. a 107 MB kernel). */
export function aptInstall(...packages: string[]): string {
  return `apt-get install -y --no-install-recommends ${packages.join(' ')}`
}

const PI_MEMORY_PARAMS = 'cgroup_enable=memory cgroup_memory=1'

function piMemoryFix(cmdlinePath: string): string {
  return `append \`${PI_MEMORY_PARAMS}\` to the single line of ${cmdlinePath} and reboot`
}

export interface ControllerFacts {
  layout: CgroupLayout
  /** From /proc/cgroups: name → enabled; a name absent here is not built into the kernel. */
  kernelControllers: Map<string, boolean>
  /** Text of /proc/cmdline. */
  kernelCmdline: string
}

/** The fix for each missing cgroup controller, joined into one instruction. */
export function controllersFix(
  missing: readonly string[],
  host: HostFlavour,
  facts: ControllerFacts,
): string {
  const fixes: string[] = []
  for (const name of missing) fixes.push(controllerFix(name, host, facts))
  return [...new Set(fixes)].join('; ')
}

function controllerFix(name: string, host: HostFlavour, facts: ControllerFacts): string {
  const enabled = facts.kernelControllers.get(name)
  if (name === 'memory' && (host.raspberryPi || enabled === false)) {
    // Raspberry Pi kernels ship with the memory controller off; the command-line switch turns it on.
    if (host.raspberryPi) return `memory controller: ${piMemoryFix(host.cmdlinePath)}`
    return (
      'memory controller: add `cgroup_enable=memory` to GRUB_CMDLINE_LINUX in /etc/default/grub, run ' +
      `update-grub and reboot (Raspberry Pi OS: ${piMemoryFix('/boot/firmware/cmdline.txt')})`
    )
  }
  if (enabled === false) {
    const where = host.raspberryPi
      ? host.cmdlinePath
      : 'GRUB_CMDLINE_LINUX in /etc/default/grub (then update-grub)'
    const disabledBy = new RegExp(`cgroup_disable=\\S*\\b${name}\\b`).test(facts.kernelCmdline)
      ? `remove \`cgroup_disable=${name}\` from`
      : `add \`cgroup_enable=${name}\` to`
    return `${name} controller: ${disabledBy} ${where} and reboot`
  }
  if (enabled === true && facts.layout !== 'v2') {
    // Built in and enabled but on no v1 hierarchy: it only needs mounting.
    return `${name} controller: mkdir -p /sys/fs/cgroup/${name} && mount -t cgroup -o ${name} cgroup /sys/fs/cgroup/${name}`
  }
  if (host.raspberryPi)
    return `${name} controller: the kernel lacks it; update Raspberry Pi OS (apt-get full-upgrade) and reboot`
  return `${name} controller: the kernel lacks it; install Debian's kernel (${aptInstall(`linux-image-${host.debArch}`)}) and reboot`
}
