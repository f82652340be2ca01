"""placeholder"""
class ExtensionTests:
    pass
