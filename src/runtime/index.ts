// runtime/: containers and processes (runtime.ts), their OCI config (oci.ts), which OCI runtime this host can
// use (detect.ts), shims (shim.ts), exit reasons (exit.ts), cgroups, logs and exec. docs/runtime.md.

export {
  createRuntime,
  defaultRunRoot,
  RUNTIME_CHOICES,
  type RuntimeChoice,
} from './create.ts'
export {
  type DetectOptions,
  detectOciRuntime,
  hybridWrapper,
  type OciRuntimeAttempt,
  type OciRuntimeChoice,
  type OciRuntimeName,
} from './detect.ts'
export { prepareRootfs, presentSystemPaths } from './host.ts'
export { defaultLogRoot } from './logs.ts'
export { instanceId, RuntimeNames } from './names.ts'
export {
  type ContainerProcessSpec,
  cpuQuota,
  DEFAULT_SYSTEM_PATHS,
  type HostsEntry,
  type OciConfig,
  ociConfig,
  parseContainerProcessSpec,
  type ResolvConf,
  renderHostname,
  renderHosts,
  renderResolvConf,
} from './oci.ts'
export { ContainerRuntime } from './runtime.ts'
export * from './types.ts'
